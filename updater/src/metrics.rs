//! Prometheus metrics of the update agent, served as text on a local socket: by default
//! `127.0.0.1:9259` (`metrics.listen`; `unix:/path` for a unix socket, `off` to disable).
//! Loopback or a unix socket only: the numbers say when a node will reboot, which is not for
//! the whole network; export them through an authenticating proxy or node exporter.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `basalt_updater_state{state}` | gauge | 1 for the current state, 0 for the others |
//! | `basalt_updater_last_check_timestamp_seconds` | gauge | end of the last check (0: never) |
//! | `basalt_updater_bytes_fetched_total` | counter | compressed bytes fetched from the repository |
//! | `basalt_updater_bytes_reused_total` | counter | bytes not downloaded: kept from an interrupted download, or copied from the booted slot by an adaptive install (re-verified) |
//! | `basalt_updater_adaptive_installs_total{result}` | counter | how usr images were installed when the release offered an adaptive install: installed (blocks reused), fell-back (an integrity or format problem; the full stream was installed instead), not-worth-it (too little shared; the full stream) |
//! | `basalt_updater_outcomes_total{result}` | counter | update outcomes: committed, rolled-back, failed, cancelled |
//! | `basalt_updater_rollbacks_total` | counter | rollbacks seen (health failures, fallbacks, operator) |
//! | `basalt_updater_checks_total{result}` | counter | checks: up-to-date, available, failed |
//! | `basalt_updater_status_write_errors_total` | counter | failed writes of the status file |

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::machine::State;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// The metrics, cheap to clone (shared counters).
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    pub state: Family<StateLabel, Gauge>,
    pub last_check: Gauge,
    pub bytes_fetched: Counter,
    pub bytes_reused: Counter,
    pub outcomes: Family<ResultLabel, Counter>,
    pub adaptive_installs: Family<ResultLabel, Counter>,
    pub rollbacks: Counter,
    pub checks: Family<ResultLabel, Counter>,
    pub status_write_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("basalt_updater");
        let state = Family::<StateLabel, Gauge>::default();
        let last_check = Gauge::default();
        let bytes_fetched = Counter::default();
        let bytes_reused = Counter::default();
        let outcomes = Family::<ResultLabel, Counter>::default();
        let adaptive_installs = Family::<ResultLabel, Counter>::default();
        let rollbacks = Counter::default();
        let checks = Family::<ResultLabel, Counter>::default();
        let status_write_errors = Counter::default();
        registry.register("state", "1 for the current update state", state.clone());
        registry.register(
            "last_check_timestamp_seconds",
            "Unix time of the end of the last check (0: never)",
            last_check.clone(),
        );
        registry.register(
            "bytes_fetched",
            "Compressed bytes fetched from the repository",
            bytes_fetched.clone(),
        );
        registry.register(
            "bytes_reused",
            "Bytes not downloaded: kept from an interrupted download or copied from the booted slot (adaptive install), re-verified",
            bytes_reused.clone(),
        );
        registry.register("outcomes", "Update outcomes by result", outcomes.clone());
        registry.register(
            "adaptive_installs",
            "Adaptive usr installs by result: installed, fell-back (to the full stream), not-worth-it",
            adaptive_installs.clone(),
        );
        registry.register(
            "rollbacks",
            "Rollbacks (health failures, fallbacks, operator)",
            rollbacks.clone(),
        );
        registry.register("checks", "Checks by result", checks.clone());
        registry.register(
            "status_write_errors",
            "Failed writes of the status file",
            status_write_errors.clone(),
        );
        for name in State::NAMES {
            state
                .get_or_create(&StateLabel {
                    state: name.to_owned(),
                })
                .set(0);
        }
        Self {
            registry: Arc::new(Mutex::new(registry)),
            state,
            last_check,
            bytes_fetched,
            bytes_reused,
            outcomes,
            adaptive_installs,
            rollbacks,
            checks,
            status_write_errors,
        }
    }

    /// Mark `name` as the current state.
    pub fn set_state(&self, name: &str) {
        for n in State::NAMES {
            self.state
                .get_or_create(&StateLabel {
                    state: n.to_owned(),
                })
                .set(i64::from(n == name));
        }
    }

    pub fn outcome(&self, result: &str) {
        self.outcomes
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    /// `n` adaptive installs ended with `result` (`crate::engine::AdaptiveCounts::by_result`).
    pub fn adaptive_install(&self, result: &str, n: u64) {
        self.adaptive_installs
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc_by(n);
    }

    pub fn check(&self, result: &str) {
        self.checks
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = match self.registry.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Where the server listens (bound by the caller, so tests bind port 0).
#[derive(Debug)]
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

/// Serve `GET /metrics` until the task is dropped. Other paths answer 404.
pub async fn serve(listener: Listener, metrics: Metrics) {
    loop {
        let accepted: std::io::Result<Box<dyn IoStream>> = match &listener {
            Listener::Tcp(l) => l
                .accept()
                .await
                .map(|(s, _)| Box::new(s) as Box<dyn IoStream>),
            Listener::Unix(l, _) => l
                .accept()
                .await
                .map(|(s, _)| Box::new(s) as Box<dyn IoStream>),
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let (status, body, ctype) = if req.uri().path() == "/metrics"
                            && req.method() == hyper::Method::GET
                        {
                            (
                                200,
                                metrics.encode(),
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                        } else {
                            (
                                404,
                                "not found: try GET /metrics\n".to_owned(),
                                "text/plain",
                            )
                        };
                        hyper::Response::builder()
                            .status(status)
                            .header(hyper::header::CONTENT_TYPE, ctype)
                            .body(Full::new(Bytes::from(body)))
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            // Bounded: a client that never finishes its request is dropped.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
        });
    }
}

/// A byte stream hyper can serve.
pub trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> IoStream for T {}
