//! Shared by the integration tests: release keys and signed synthetic releases, and a
//! harness running the real server in-process on 127.0.0.1 with a manual clock.

#![allow(dead_code)]

pub mod pg;

use std::path::Path;
use std::sync::Arc;

use basalt_manifest::chrono::{DateTime, Duration, Utc};
use basalt_manifest::{Manifest, PublicKey, SigningKey, TrustRootDocument};
use basalt_rollout::auth::SystemRandom;
use basalt_rollout::clock::ManualClock;
use basalt_rollout::server::{Running, Server};
use basalt_rollout::service::{self, Config, Service};
use basalt_rollout::store::{self, Backend};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Method};

pub fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-02T08:00:00Z")
        .expect("time")
        .with_timezone(&Utc)
}

/// Three release keys, threshold 2, and a trust root signed by them.
pub struct Keys {
    pub keys: Vec<SigningKey>,
    pub root_envelope: Vec<u8>,
}

impl Keys {
    pub fn new(seed: u8) -> Keys {
        let keys: Vec<SigningKey> = (0..3u8)
            .map(|i| SigningKey::from_seed(&[seed.wrapping_add(i); 32]).expect("key"))
            .collect();
        let public: Vec<PublicKey> = keys.iter().map(SigningKey::public_key).collect();
        let doc = TrustRootDocument::new(1, 2, &public, None);
        let refs: Vec<&SigningKey> = keys.iter().collect();
        let root_envelope = basalt_manifest::sign_trust_root(&doc, &refs).expect("root");
        Keys {
            keys,
            root_envelope,
        }
    }

    pub fn root(&self) -> basalt_manifest::TrustRoot {
        basalt_manifest::TrustRoot::from_initial_envelope(&self.root_envelope).expect("root")
    }

    /// A release signed by keys `signers` (indexes).
    pub fn release_by(&self, manifest: &Manifest, signers: &[usize]) -> Vec<u8> {
        let refs: Vec<&SigningKey> = signers.iter().map(|&i| &self.keys[i]).collect();
        basalt_manifest::sign_release(manifest, &refs).expect("sign")
    }

    /// A release signed by a threshold.
    pub fn release(&self, version: &str, sequence: u64) -> Vec<u8> {
        self.release_by(&manifest(version, sequence, "stable", t0()), &[0, 1])
    }
}

/// A synthetic manifest (one kernel artifact, a fake digest: nothing is downloaded).
pub fn manifest(version: &str, sequence: u64, channel: &str, issued: DateTime<Utc>) -> Manifest {
    let json = format!(
        r#"{{"schema_version":1,"os":"basalt","version":"{version}","channel":"{channel}","arch":"x86_64","sequence":{sequence},
        "issued_at":"{}","expires_at":"{}",
        "artifacts":[{{"kind":"kernel","name":"vmlinuz","size":5000,"sha256":"{}"}}]}}"#,
        issued.to_rfc3339(),
        (issued + Duration::days(3650)).to_rfc3339(),
        "44".repeat(32)
    );
    Manifest::from_json(json.as_bytes()).expect("manifest")
}

/// The real server on 127.0.0.1, in-process, with a manual clock and its own runtime.
pub struct Harness {
    pub rt: tokio::runtime::Runtime,
    pub clock: Arc<ManualClock>,
    pub backend: Arc<dyn Backend>,
    pub keys: Keys,
    pub running: Option<Running>,
    pub operator: String,
    pub repository_dir: Option<std::path::PathBuf>,
    pub dir: tempfile::TempDir,
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

impl Harness {
    /// A fresh SQLite database in a temporary folder.
    pub fn sqlite() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend: Arc<dyn Backend> =
            Arc::new(store::sqlite::Sqlite::open(&dir.path().join("fleet.db")).expect("sqlite"));
        Harness::with(backend, dir, None)
    }

    pub fn with(
        backend: Arc<dyn Backend>,
        dir: tempfile::TempDir,
        repository_dir: Option<std::path::PathBuf>,
    ) -> Harness {
        store::migrations::migrate(backend.as_ref(), t0()).expect("migrate");
        let operator =
            service::create_operator_token(backend.as_ref(), &SystemRandom::default(), "alice")
                .expect("operator token")
                .token;
        let mut h = Harness {
            rt: runtime(),
            clock: Arc::new(ManualClock::new(t0())),
            backend,
            keys: Keys::new(1),
            running: None,
            operator,
            repository_dir,
            dir,
        };
        h.start();
        h
    }

    pub fn service(&self) -> Service {
        Service::new(
            self.backend.clone(),
            self.clock.clone(),
            Arc::new(SystemRandom::default()),
            Config {
                repository_url: self
                    .running
                    .as_ref()
                    .map(|r| format!("{}repo/", r.url()))
                    .unwrap_or_else(|| "http://127.0.0.1:1/repo/".into()),
                repository_dir: self.repository_dir.clone(),
                trust_root: self.keys.root(),
            },
        )
    }

    /// Starts (or restarts) the server on a new port.
    pub fn start(&mut self) {
        let server = Server::new(self.service(), self.repository_dir.clone());
        self.running = Some(
            self.rt
                .block_on(Running::start(server, "127.0.0.1:0"))
                .expect("server start"),
        );
    }

    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.stop());
        }
    }

    pub fn url(&self) -> String {
        self.running.as_ref().expect("running").url()
    }

    /// One raw request: (status, body).
    pub fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let url = format!("{}{}", self.url(), path.trim_start_matches('/'));
        self.rt
            .block_on(raw(method, &url, token, body.to_vec(), &[]))
    }

    /// An operator call that must succeed; the JSON answer.
    pub fn op(&self, method: Method, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(body).expect("json")
        };
        let (status, answer) = self.call(method.clone(), path, Some(&self.operator), &bytes);
        assert_eq!(
            status,
            200,
            "{method} {path}: {}",
            String::from_utf8_lossy(&answer)
        );
        serde_json::from_slice(&answer).expect("json answer")
    }

    /// Creates pool `name` on channel stable/x86_64 and returns an enrolment token.
    pub fn pool(&self, name: &str, interval: u64) -> String {
        self.op(
            Method::POST,
            "api/v1/pools",
            &serde_json::json!({"name": name, "channel": "stable", "arch": "x86_64", "check_in_interval_secs": interval}),
        );
        self.op(
            Method::POST,
            &format!("api/v1/pools/{name}/enroll-tokens"),
            &serde_json::Value::Null,
        )["token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    /// Publishes a signed release of version/sequence into stable/x86_64.
    pub fn publish(&self, version: &str, sequence: u64) {
        let envelope = self.keys.release(version, sequence);
        let (status, body) = self.call(
            Method::POST,
            "api/v1/channels/stable/x86_64/releases",
            Some(&self.operator),
            &envelope,
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }

    pub fn status(&self, pool: &str) -> serde_json::Value {
        self.op(
            Method::GET,
            &format!("api/v1/pools/{pool}/status"),
            &serde_json::Value::Null,
        )
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One HTTP request with a fresh connection.
pub async fn raw(
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, Vec<u8>) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = hyper::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).expect("request");
    let response = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(req))
        .await
        .expect("answer in time")
        .expect("request");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, body)
}

/// Writes `bytes` to `path`, creating folders.
pub fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
}
