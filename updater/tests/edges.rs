//! The daemon's I/O edges on their own: the interim HTTP client, health probes (commands,
//! HTTP endpoints, the gate's deadline), the metrics endpoint on TCP and on a unix socket.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_updater::health::{self, CommandSucceeds, HttpAnswers, Probe};
use basalt_updater::httpc::{self, HttpError};
use basalt_updater::metrics::{self, Metrics};
use basalt_updater::reboot::BoxFuture;

/// A one-shot HTTP server on 127.0.0.1 answering `response` to each connection (bounded count).
fn serve(response: &'static [u8], connections: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming().take(connections) {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 4096];
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.read(&mut buf);
            let _ = s.write_all(response);
        }
    });
    url
}

#[tokio::test]
async fn http_client_refusals_are_typed_and_bounded() {
    let e = httpc::request(
        hyper::Method::GET,
        "https://127.0.0.1:1/x",
        &[],
        None,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, HttpError::HttpsUnsupported { .. }), "{e}");
    let e = httpc::request(
        hyper::Method::GET,
        "ftp://x/y",
        &[],
        None,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, HttpError::Url { .. }), "{e}");
    // Nothing listens on a port we just released.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/v1/pre-reboot");
    let e = httpc::request(hyper::Method::POST, &url, &[], None, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(e, HttpError::Connect { .. }), "{e}");
    assert!(e.to_string().contains(&url), "{e}");
    // A server that accepts and never answers: a timeout, in bounded time.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/healthz", silent.local_addr().unwrap());
    let started = Instant::now();
    let e = httpc::request(
        hyper::Method::GET,
        &url,
        &[],
        None,
        Duration::from_millis(500),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, HttpError::Timeout { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(silent);
    // A body over the cap.
    let big: &'static [u8] = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
            70_000,
            "x".repeat(70_000)
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    let url = serve(big, 1);
    let e = httpc::request(hyper::Method::GET, &url, &[], None, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(e, HttpError::Protocol { .. }), "{e}");
    // A good answer, with its status and body.
    let url = serve(b"HTTP/1.1 409 Conflict\r\nContent-Length: 2\r\n\r\nno", 1);
    let r = httpc::request(
        hyper::Method::POST,
        &url,
        &[("fleet-lock-protocol", "true")],
        Some(("application/json", b"{}".to_vec())),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(&r.body[..], b"no");
}

#[tokio::test]
async fn command_probes() {
    let budget = Duration::from_secs(5);
    CommandSucceeds {
        argv: vec!["/bin/true".into()],
    }
    .probe(budget)
    .await
    .unwrap();
    let e = CommandSucceeds {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo broken >&2; exit 3".into(),
        ],
    }
    .probe(budget)
    .await
    .unwrap_err();
    assert!(e.contains("exit status: 3") && e.contains("broken"), "{e}");
    let e = CommandSucceeds {
        argv: vec!["/nonexistent/check".into()],
    }
    .probe(budget)
    .await
    .unwrap_err();
    assert!(e.contains("starting /nonexistent/check"), "{e}");
    let started = Instant::now();
    let e = CommandSucceeds {
        argv: vec!["/bin/sleep".into(), "30".into()],
    }
    .probe(Duration::from_millis(300))
    .await
    .unwrap_err();
    assert!(e.contains("killed"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn http_probes() {
    let url = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1);
    HttpAnswers {
        url: format!("{url}/healthz"),
    }
    .probe(Duration::from_secs(5))
    .await
    .unwrap();
    let url = serve(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
        1,
    );
    let e = HttpAnswers {
        url: format!("{url}/healthz"),
    }
    .probe(Duration::from_secs(5))
    .await
    .unwrap_err();
    assert_eq!(e, "HTTP 503");
}

struct PassesAfter {
    calls: Arc<AtomicU32>,
    after: u32,
}

impl Probe for PassesAfter {
    fn name(&self) -> String {
        "eventually".into()
    }
    fn probe(&self, _: Duration) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= self.after {
                Ok(())
            } else {
                Err(format!("round {n}"))
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn the_gate_retries_until_its_deadline() {
    let calls = Arc::new(AtomicU32::new(0));
    let probes: Vec<Box<dyn Probe>> = vec![Box::new(PassesAfter {
        calls: calls.clone(),
        after: 5,
    })];
    let started = tokio::time::Instant::now();
    health::run_gate(&probes, Duration::from_secs(60), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert_eq!(started.elapsed(), Duration::from_secs(40));

    let calls = Arc::new(AtomicU32::new(0));
    let probes: Vec<Box<dyn Probe>> = vec![Box::new(PassesAfter {
        calls: calls.clone(),
        after: 100,
    })];
    let started = tokio::time::Instant::now();
    let f = health::run_gate(&probes, Duration::from_secs(60), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(f.check, "eventually");
    assert!(f.detail.starts_with("round "), "{}", f.detail);
    assert!(started.elapsed() <= Duration::from_secs(60));
    // No probes: passes at once.
    health::run_gate(&[], Duration::from_secs(60), Duration::from_secs(10))
        .await
        .unwrap();
}

async fn get(
    stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    path: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn metrics_are_served_on_loopback_tcp_and_a_unix_socket() {
    let m = Metrics::new();
    m.set_state("downloading");
    m.bytes_fetched.inc_by(1234);
    m.outcome("committed");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(metrics::serve(metrics::Listener::Tcp(l), m.clone()));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = get(&mut s, "/metrics").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("basalt_updater_state{state=\"downloading\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("basalt_updater_state{state=\"idle\"} 0"),
        "{body}"
    );
    assert!(
        body.contains("basalt_updater_bytes_fetched_total 1234"),
        "{body}"
    );
    assert!(
        body.contains("basalt_updater_outcomes_total{result=\"committed\"} 1"),
        "{body}"
    );
    assert!(body.contains("# EOF"), "{body}");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(get(&mut s, "/").await.starts_with("HTTP/1.1 404"));
    server.abort();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.sock");
    let l = tokio::net::UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(metrics::serve(metrics::Listener::Unix(l, path.clone()), m));
    let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
    assert!(get(&mut s, "/metrics")
        .await
        .contains("basalt_updater_rollbacks_total 0"));
    server.abort();
}
