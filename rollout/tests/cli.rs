//! The `basalt-rollout` binary's offline administration, as `rollout/README.md` tells an
//! operator to bootstrap: `operator add` on a database no `serve` has touched yet, then
//! `serve` on the same file accepts that token. (Found by `tests/tests/vm_fleet.rs`: the first
//! `operator add` on a new file failed with "no such table: tokens".)
#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_basalt-rollout");

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// `GET path` with a bearer token; the status code.
fn get(port: u16, path: &str, token: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn operator_add_on_a_new_database_then_serve_accepts_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleet.db");
    let db = db.to_str().unwrap();
    let out = run(&["operator", "add", "alice", "--db", db]);
    assert!(
        out.status.success(),
        "operator add on a new database: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(token.len() >= 20, "a token is printed: {token:?}");
    // Idempotent schema: a second operator on the same file.
    let bob = run(&["operator", "add", "bob", "--db", db]);
    assert!(
        bob.status.success(),
        "{}",
        String::from_utf8_lossy(&bob.stderr)
    );
    let revoked = run(&["operator", "revoke", "bob", "--db", db]);
    assert!(
        String::from_utf8_lossy(&revoked.stdout).contains("1 token(s)"),
        "{revoked:?}"
    );

    // The trust root is only read at start; any valid initial envelope does.
    let key = basalt_manifest::SigningKey::from_seed(&[7; 32]).unwrap();
    let root = basalt_manifest::sign_trust_root(
        &basalt_manifest::TrustRootDocument::new(1, 1, &[key.public_key()], None),
        &[&key],
    )
    .unwrap();
    let trust = dir.path().join("trust.json");
    std::fs::write(&trust, root).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(BIN)
        .args([
            "serve",
            "--db",
            db,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--trust-root")
        .arg(&trust)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "serve did not listen");
        assert!(server.try_wait().unwrap().is_none(), "serve exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    let alice = get(port, "/api/v1/pools", &token);
    let wrong = get(port, "/api/v1/pools", "not-a-token");
    // Only the process this test started, by its handle.
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(alice, 200, "alice's token, made offline, is accepted");
    assert_eq!(wrong, 401, "a wrong token is refused");
}
