//! The HTTP release source against a misbehaving server (`basalt_tests::faulty_http`): each
//! fault gives the right typed `SourceError`, names the URL, and comes back in bounded time
//! (read timeout 2 s in these tests; the bound checked is generous and only proves that
//! nothing hangs).

mod http_common;

use std::time::{Duration, Instant};

use basalt_tests::faulty_http::{Fault, FaultyServer};
use basalt_updater::source::{Source, SourceError};
use http_common::{config, content, fetch, populate, range, source};

const FILE: &str = "blobs/sha256/f00d";
const LEN: usize = 300_000;
/// Far above every timeout involved: a failure here means something hangs.
const HANG: Duration = Duration::from_secs(30);

fn server() -> (tempfile::TempDir, FaultyServer, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = content(LEN, 7);
    populate(dir.path(), &[(FILE, &data)]);
    let server = FaultyServer::start(dir.path()).expect("faulty server");
    (dir, server, data)
}

fn file_url(server: &FaultyServer) -> String {
    format!("{}{FILE}", server.url())
}

/// Fetch the whole file (expected length given) and return the error, timing the call.
fn fetch_err(
    server: &FaultyServer,
    r: Option<basalt_updater::source::ByteRange>,
    expected: Option<u64>,
) -> SourceError {
    let src = source(&server.url());
    let start = Instant::now();
    let err = fetch(&src, FILE, r, expected).expect_err("the fault must be an error");
    assert!(start.elapsed() < HANG, "took {:?}", start.elapsed());
    assert!(
        err.to_string().contains(&file_url(server)),
        "error does not name the URL: {err}"
    );
    err
}

#[test]
fn healthy_server_serves_whole_files_and_ranges() {
    let (_dir, server, data) = server();
    let src = source(&server.url());
    assert_eq!(fetch(&src, FILE, None, Some(LEN as u64)).unwrap(), data);
    assert_eq!(
        fetch(&src, FILE, range(1000, None), Some(LEN as u64 - 1000)).unwrap(),
        data[1000..]
    );
    assert_eq!(
        fetch(&src, FILE, range(10, Some(20)), Some(20)).unwrap(),
        data[10..30]
    );
    let log = server.requests_for(FILE);
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].range, None);
    assert_eq!(log[1].range.as_deref(), Some("bytes=1000-"));
    assert_eq!(log[2].range.as_deref(), Some("bytes=10-29"));
    assert_eq!(log[2].status, 206);
    let ua = log[0].header("user-agent").unwrap();
    assert!(ua.starts_with("basalt-updated/"), "{ua}");
    assert_eq!(log[0].header("accept-encoding"), Some("identity"));
}

#[test]
fn connection_dropped_mid_body_is_a_length_error() {
    let (_dir, server, _) = server();
    server.on(FILE, Fault::DropAfter(1000));
    match fetch_err(&server, None, Some(LEN as u64)) {
        SourceError::Length { detail, .. } => assert!(detail.contains("1000"), "{detail}"),
        other => panic!("{other:?}"),
    }
    // Without an expected length, the announced Content-Length still catches it.
    assert!(matches!(
        fetch_err(&server, None, None),
        SourceError::Length { .. }
    ));
    // Chunked, no length known at all: the expected length catches it.
    server.on(FILE, Fault::Chunked);
    assert!(matches!(
        fetch_err(&server, None, Some(LEN as u64)),
        SourceError::Length { .. }
    ));
}

#[test]
fn stalled_body_times_out() {
    let (_dir, server, _) = server();
    server.on(FILE, Fault::StallAfter(5000));
    match fetch_err(&server, None, Some(LEN as u64)) {
        SourceError::Timeout { while_, secs, .. } => {
            assert_eq!(while_, "reading the body");
            assert_eq!(secs, 2);
        }
        other => panic!("{other:?}"),
    }
    // The timed-out connection is closed once the reader is dropped (no leak): the server's
    // stalled connection sees the hang-up.
    assert_eq!(
        server.wait_idle(Duration::from_secs(10)),
        0,
        "connection leaked"
    );
    // Stalled before the first body byte, and on a ranged request.
    server.clear_faults();
    server.on(FILE, Fault::StallAfter(0));
    assert!(matches!(
        fetch_err(&server, range(5, None), None),
        SourceError::Timeout { .. }
    ));
}

#[test]
fn silent_server_and_slowloris_headers_time_out() {
    let (_dir, server, _) = server();
    server.on(FILE, Fault::Silent);
    match fetch_err(&server, None, None) {
        SourceError::Timeout { while_, .. } => {
            assert_eq!(while_, "waiting for the response headers")
        }
        other => panic!("{other:?}"),
    }
    server.clear_faults();
    // One header byte every 100 ms: each byte is well within the read timeout, the whole head
    // is not.
    server.on(FILE, Fault::SlowHeaders(Duration::from_millis(100)));
    match fetch_err(&server, None, None) {
        SourceError::Timeout { while_, .. } => {
            assert_eq!(while_, "waiting for the response headers")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn extra_bytes_never_reach_the_caller() {
    let (_dir, server, data) = server();
    let src = source(&server.url());
    // After an honest Content-Length the extra bytes are outside the message: ignored.
    server.on(FILE, Fault::ExtraBytes(100));
    assert_eq!(fetch(&src, FILE, None, Some(LEN as u64)).unwrap(), data);
    // Without a length, the body runs on: refused as soon as it passes the expected length.
    server.on(FILE, Fault::NoContentLength);
    match fetch_err(&server, None, Some(LEN as u64)) {
        SourceError::Length { detail, .. } => {
            assert!(detail.contains("more bytes than expected"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    server.clear_faults();
    server.on(FILE, Fault::Chunked);
    server.on(FILE, Fault::ExtraBytes(10));
    // Chunked framing ends the message; the junk after it is not body.
    assert_eq!(fetch(&src, FILE, None, Some(LEN as u64)).unwrap(), data);
}

#[test]
fn lying_content_length_is_refused() {
    let (_dir, server, data) = server();
    // Announces more than it sends: cut short.
    server.on(FILE, Fault::ContentLength(LEN as u64 + 10));
    assert!(matches!(
        fetch_err(&server, None, None),
        SourceError::Length { .. }
    ));
    // Announces another length than the manifest says: refused before reading.
    server.clear_faults();
    server.on(FILE, Fault::ContentLength(LEN as u64 - 10));
    match fetch_err(&server, None, Some(LEN as u64)) {
        SourceError::Length { detail, .. } => assert!(detail.contains("announces"), "{detail}"),
        other => panic!("{other:?}"),
    }
    // A truncated file with an honest length: refused up front as well.
    server.clear_faults();
    server.on(FILE, Fault::Truncate(1000));
    assert!(matches!(
        fetch_err(&server, None, Some(LEN as u64)),
        SourceError::Length { .. }
    ));
    // Truncated and chunked (no length to compare): refused at the end.
    server.on(FILE, Fault::Chunked);
    match fetch_err(&server, None, Some(LEN as u64)) {
        SourceError::Length { detail, .. } => assert!(detail.contains("1000 of"), "{detail}"),
        other => panic!("{other:?}"),
    }
    // Not a number.
    server.clear_faults();
    server.on(FILE, Fault::NoContentLength);
    server.on(FILE, Fault::Header("Content-Length".into(), "12x".into()));
    assert!(fetch_err(&server, None, None).to_string().contains("/f00d"));
    drop(data);
}

#[test]
fn a_flipped_byte_is_delivered_as_sent() {
    // The source cannot know the bytes are wrong: it must hand them over unchanged so the
    // pipeline's sha256 check sees exactly what the network delivered.
    let (_dir, server, data) = server();
    server.on(FILE, Fault::FlipByte(12345));
    let got = fetch(
        &source(&server.url()),
        FILE,
        range(12000, Some(1000)),
        Some(1000),
    )
    .unwrap();
    let diff: Vec<usize> = (0..1000).filter(|&i| got[i] != data[12000 + i]).collect();
    assert_eq!(diff, vec![345]);
}

#[test]
fn server_ignoring_range_is_skipped_to_the_offset() {
    let (_dir, server, data) = server();
    server.on(FILE, Fault::IgnoreRange);
    let src = source(&server.url());
    assert_eq!(
        fetch(&src, FILE, range(70_000, None), Some(LEN as u64 - 70_000)).unwrap(),
        data[70_000..]
    );
    assert_eq!(
        fetch(&src, FILE, range(100, Some(50)), Some(50)).unwrap(),
        data[100..150]
    );
    // Without a Content-Length either.
    server.on(FILE, Fault::NoContentLength);
    assert_eq!(
        fetch(&src, FILE, range(250_000, None), None).unwrap(),
        data[250_000..]
    );
    let log = server.requests_for(FILE);
    assert!(log.iter().all(|r| r.status == 200 && r.range.is_some()));
    // An offset past the end of a whole-file reply.
    server.clear_faults();
    server.on(FILE, Fault::IgnoreRange);
    assert!(matches!(
        fetch_err(&server, range(LEN as u64 + 5, None), None),
        SourceError::Length { .. }
    ));
}

#[test]
fn wrong_content_range_is_refused() {
    let (_dir, server, _) = server();
    for bad in [
        "bytes 0-99/300000".to_string(),  // other start
        "bytes 100-198/300000".into(),    // ends early
        "bytes 100-299999/300000".into(), // more than asked
        "bytes 100-199/150".into(),       // malformed: end beyond length
        "items 100-199/300000".into(),    // not bytes
        "bytes 100-199".into(),           // no length part
    ] {
        server.clear_faults();
        server.on(FILE, Fault::ContentRange(bad.clone()));
        match fetch_err(&server, range(100, Some(100)), Some(100)) {
            SourceError::Length { detail, .. } => {
                assert!(detail.contains("Content-Range"), "{bad}: {detail}")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    // Open range answered with a range that stops before the end of the file.
    server.clear_faults();
    server.on(FILE, Fault::ContentRange("bytes 100-199/300000".into()));
    assert!(matches!(
        fetch_err(&server, range(100, None), None),
        SourceError::Length { .. }
    ));
    // An offset past the end: 416; exactly at the end: empty.
    server.clear_faults();
    assert_eq!(
        fetch(&source(&server.url()), FILE, range(LEN as u64, None), None).unwrap(),
        b""
    );
    match fetch_err(&server, range(LEN as u64 + 1, None), None) {
        SourceError::Length { detail, .. } => {
            assert!(detail.contains("not satisfiable"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn status_codes_map_to_typed_errors() {
    let (_dir, server, _) = server();
    assert!(matches!(
        fetch(&source(&server.url()), "blobs/sha256/missing", None, None),
        Err(SourceError::NotFound { location }) if location.ends_with("/blobs/sha256/missing")
    ));
    for (status, not_found) in [
        (404, true),
        (410, true),
        (429, false),
        (500, false),
        (503, false),
        (403, false),
        (206, false),
    ] {
        server.clear_faults();
        server.on(FILE, Fault::Status(status));
        match fetch_err(&server, None, None) {
            SourceError::NotFound { .. } if not_found => {}
            SourceError::Status { status: s, .. } if !not_found => assert_eq!(s, status),
            other => panic!("{status}: {other:?}"),
        }
    }
}

#[test]
fn redirects_are_followed_within_bounds() {
    let (_dir, server, data) = server();
    let src = source(&server.url());
    // A chain of four, relative and absolute, ending at the file.
    server.on(
        "r1",
        Fault::Redirect {
            status: 301,
            location: "/r2".into(),
        },
    );
    server.on(
        "r2",
        Fault::Redirect {
            status: 302,
            location: "r3?x=1".into(),
        },
    );
    server.on(
        "r3",
        Fault::Redirect {
            status: 307,
            location: format!("{}r4", server.url()),
        },
    );
    server.on(
        "r4",
        Fault::Redirect {
            status: 308,
            location: format!("/{FILE}"),
        },
    );
    assert_eq!(
        fetch(&src, "r1", range(5, Some(10)), Some(10)).unwrap(),
        data[5..15]
    );
    // The Range header went along on every hop.
    assert_eq!(
        server.requests_for(FILE)[0].range.as_deref(),
        Some("bytes=5-14")
    );
    assert_eq!(server.requests_for("r3")[0].target, "/r3?x=1");
    // A loop.
    server.on(
        "loop-a",
        Fault::Redirect {
            status: 302,
            location: "loop-b".into(),
        },
    );
    server.on(
        "loop-b",
        Fault::Redirect {
            status: 302,
            location: "loop-a".into(),
        },
    );
    let err = fetch(&src, "loop-a", None, None).unwrap_err();
    assert!(err.to_string().contains("more than 5 redirects"), "{err}");
    assert!(err.to_string().contains("loop-a"), "{err}");
    assert_eq!(
        server.requests_for("loop-a").len() + server.requests_for("loop-b").len(),
        6
    );
    // Too long a chain (6 hops with max 5), a redirect without Location, to another scheme.
    for i in 0..6 {
        server.on(
            &format!("c{i}"),
            Fault::Redirect {
                status: 302,
                location: format!("c{}", i + 1),
            },
        );
    }
    populate(_dir.path(), &[("c6", b"end")]);
    assert!(fetch(&src, "c0", None, None)
        .unwrap_err()
        .to_string()
        .contains("redirects"));
    assert_eq!(fetch(&src, "c1", None, None).unwrap(), b"end");
    server.on("noloc", Fault::Status(302));
    assert!(fetch(&src, "noloc", None, None)
        .unwrap_err()
        .to_string()
        .contains("without a Location"));
    server.on(
        "file",
        Fault::Redirect {
            status: 302,
            location: "file:///etc/passwd".into(),
        },
    );
    assert!(fetch(&src, "file", None, None)
        .unwrap_err()
        .to_string()
        .contains("not supported"));
}

#[test]
fn encoded_replies_are_refused() {
    let (_dir, server, _) = server();
    server.on(
        FILE,
        Fault::Header("Content-Encoding".into(), "gzip".into()),
    );
    match fetch_err(&server, None, None) {
        SourceError::Transport { detail, .. } => assert!(detail.contains("gzip"), "{detail}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn connection_refused_and_bad_paths() {
    // A port nothing listens on (bound then released).
    let port = basalt_tests::web::free_port().unwrap();
    let src = source(&format!("http://127.0.0.1:{port}/repo"));
    match fetch(&src, "x", None, None) {
        Err(SourceError::Transport { location, detail }) => {
            assert_eq!(location, format!("http://127.0.0.1:{port}/repo/x"));
            assert!(detail.contains("connecting"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    for bad in ["", "../x", "a//b", "./a", "a/..", "/abs"] {
        assert!(src.open(bad, None, None).is_err(), "{bad:?} accepted");
    }
    // Segments are encoded, never interpreted.
    assert_eq!(
        src.location("a b/%2e%2e/c?d#e"),
        format!("http://127.0.0.1:{port}/repo/a%20b/%252e%252e/c%3Fd%23e")
    );
    // A range and an expected length that disagree are a caller error, caught before any
    // request.
    assert!(matches!(
        src.open("x", range(0, Some(5)), Some(6)),
        Err(SourceError::Length { .. })
    ));
    assert!(http_common::config().read_timeout > Duration::ZERO);
    let _ = config();
}

#[test]
fn read_small_caps_the_size() {
    let (_dir, server, data) = server();
    let src = source(&server.url());
    assert_eq!(src.read_small(FILE, LEN as u64).unwrap(), data);
    assert!(matches!(
        src.read_small(FILE, LEN as u64 - 1),
        Err(SourceError::Length { .. })
    ));
}

/// The async client as the daemon uses it: on a current-thread runtime, POST with a JSON body
/// (FleetLock), no redirect following for POST, a small body read with a cap.
#[test]
fn async_client_posts_json_on_a_current_thread_runtime() {
    use basalt_updater::http::{url, HttpClient, Request};
    let (dir, server, _) = server();
    populate(dir.path(), &[("v1/pre-reboot", b"{}")]);
    server.on(
        "moved",
        Fault::Redirect {
            status: 307,
            location: "v1/pre-reboot".into(),
        },
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = HttpClient::new(config()).unwrap();
    let body = br#"{"client_params":{"id":"node-1","group":"default"}}"#;
    let post = |path: &str| {
        Request::post(
            url::parse(&format!("{}{path}", server.url())).unwrap(),
            "application/json",
            &body[..],
        )
        .header(
            "fleet-lock-protocol".parse().unwrap(),
            "true".parse().unwrap(),
        )
    };
    let (status, reply) = rt.block_on(async {
        let response = client.send(&post("v1/pre-reboot")).await.unwrap();
        (
            response.status().as_u16(),
            response.bytes(1024).await.unwrap(),
        )
    });
    assert_eq!((status, reply.as_slice()), (200, &b"{}"[..]));
    let logged = &server.requests_for("v1/pre-reboot")[0];
    assert_eq!(logged.method, "POST");
    assert_eq!(logged.body, body);
    assert_eq!(logged.header("content-type"), Some("application/json"));
    assert_eq!(logged.header("fleet-lock-protocol"), Some("true"));
    // A POST is never replayed to a redirect target: the 307 comes back to the caller.
    let status =
        rt.block_on(async { client.send(&post("moved")).await.unwrap().status().as_u16() });
    assert_eq!(status, 307);
    assert_eq!(server.requests_for("v1/pre-reboot").len(), 1);
    // A reply larger than the cap is refused.
    let err = rt
        .block_on(async {
            client
                .send(&post("v1/pre-reboot"))
                .await
                .unwrap()
                .bytes(1)
                .await
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("larger than the 1-byte limit"),
        "{err}"
    );
}

#[test]
fn redirect_to_another_host_is_followed() {
    // A CDN or mirror: `localhost` is another host than `127.0.0.1` as far as URLs go.
    let (_dir, server, data) = server();
    let port = server.addr().port();
    server.on(
        "elsewhere",
        Fault::Redirect {
            status: 302,
            location: format!("http://localhost:{port}/{FILE}"),
        },
    );
    let src = source(&server.url());
    assert_eq!(
        fetch(&src, "elsewhere", None, Some(LEN as u64)).unwrap(),
        data
    );
    assert_eq!(
        server.requests_for(FILE)[0].header("host"),
        Some(format!("localhost:{port}").as_str())
    );
}

#[test]
fn a_tls_handshake_that_never_completes_times_out() {
    // Accepts TCP (the kernel's backlog) but never speaks: the TLS handshake waits for a
    // ServerHello that never comes. Bounded by the connect timeout.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = basalt_updater::http::HttpConfig {
        connect_timeout: Duration::from_secs(1),
        ..config()
    };
    let src =
        basalt_updater::source::http::HttpSource::new(&format!("https://127.0.0.1:{port}/"), cfg)
            .unwrap();
    let start = Instant::now();
    match fetch(&src, FILE, None, None) {
        Err(SourceError::Timeout {
            while_, location, ..
        }) => {
            assert_eq!(while_, "connecting");
            assert!(location.contains(&port.to_string()));
        }
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() < HANG);
    drop(listener);
}

/// The daemon's arrangement: its current-thread runtime, the pipeline on a `spawn_blocking`
/// worker reading through the blocking source (which runs its own runtime).
#[test]
fn blocking_source_inside_spawn_blocking_of_a_current_thread_runtime() {
    let (_dir, server, data) = server();
    let src = source(&server.url());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got = rt
        .block_on(async move {
            tokio::task::spawn_blocking(move || {
                fetch(&src, FILE, range(1, None), Some(LEN as u64 - 1))
            })
            .await
        })
        .unwrap()
        .unwrap();
    assert_eq!(got, data[1..]);
    // Dropping the source inside an async task is allowed (its runtime shuts down in the
    // background).
    let src = source(&server.url());
    rt.block_on(async move { drop(src) });
}

#[test]
fn a_reader_dropped_mid_body_closes_its_connection() {
    let (_dir, server, _) = server();
    server.on(FILE, Fault::StallAfter(100_000));
    let src = source(&server.url());
    let mut reader = src.open(FILE, None, Some(LEN as u64)).unwrap();
    let mut buf = vec![0u8; 50_000];
    std::io::Read::read_exact(&mut reader, &mut buf).unwrap();
    assert_eq!(server.open_connections(), 1);
    drop(reader);
    assert_eq!(
        server.wait_idle(Duration::from_secs(10)),
        0,
        "connection leaked"
    );
}

#[test]
fn bad_client_settings_are_named() {
    use basalt_updater::http::{HttpConfig, Roots};
    use basalt_updater::source::http::HttpSource;
    let err = HttpSource::new(
        "https://repo.example/",
        HttpConfig {
            roots: Roots::Pinned("/nonexistent/ca.pem".into()),
            ..config()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with("https://repo.example/: "),
        "{err}"
    );
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    for bad in ["ftp://h/", "https://u:p@h/", "not a url", "https://h/?q=1"] {
        assert!(HttpSource::new(bad, config()).is_err(), "{bad}");
    }
}

/// The wire form of proxied requests, seen by the faulty server playing the proxy: absolute
/// form with `Proxy-Authorization` for http, `CONNECT` for https, and the origin's name is
/// never resolved by us (the proxy does that).
#[test]
fn proxied_requests_on_the_wire() {
    use basalt_updater::http::{HttpConfig, ProxyConfig};
    use basalt_updater::source::http::HttpSource;
    let (_dir, proxy, data) = server();
    let proxy_url = format!("http://al%40ice:pa%3Ass@{}", proxy.addr());
    let cfg = |vars: Vec<(&'static str, String)>| HttpConfig {
        proxy: ProxyConfig::from_vars(|n| {
            vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone())
        })
        .unwrap(),
        ..config()
    };
    // `.invalid` never resolves: only the proxy could reach it.
    let src = HttpSource::new(
        "http://repo.invalid/",
        cfg(vec![("http_proxy", proxy_url.clone())]),
    )
    .unwrap();
    assert_eq!(
        fetch(&src, FILE, range(3, Some(4)), Some(4)).unwrap(),
        data[3..7]
    );
    let seen = &proxy.requests_for(FILE)[0];
    assert_eq!(seen.target, format!("http://repo.invalid/{FILE}"));
    assert_eq!(seen.header("host"), Some("repo.invalid"));
    // base64("al@ice:pa:ss")
    assert_eq!(
        seen.header("proxy-authorization"),
        Some("Basic YWxAaWNlOnBhOnNz")
    );
    assert_eq!(seen.range.as_deref(), Some("bytes=3-6"));

    // https goes through CONNECT (this "proxy" refuses it: a typed error naming the proxy).
    let src = HttpSource::new(
        "https://repo.invalid:8443/",
        cfg(vec![("HTTPS_PROXY", proxy_url.clone())]),
    )
    .unwrap();
    match fetch(&src, FILE, None, None) {
        Err(SourceError::Transport { detail, .. }) => {
            assert!(
                detail.contains(&format!(
                    "proxy {} refused the tunnel to repo.invalid:8443: HTTP 404",
                    proxy.addr()
                )),
                "{detail}"
            );
        }
        other => panic!("{other:?}"),
    }
    let connect = proxy
        .requests()
        .into_iter()
        .find(|r| r.method == "CONNECT")
        .unwrap();
    assert_eq!(connect.target, "repo.invalid:8443");
    assert_eq!(
        connect.header("proxy-authorization"),
        Some("Basic YWxAaWNlOnBhOnNz")
    );

    // An https proxy setting does not apply to http URLs, and NO_PROXY wins: both go direct
    // (and fail to resolve `.invalid`, naming it).
    let before = proxy.requests().len();
    for vars in [
        vec![("https_proxy", proxy_url.clone())],
        vec![
            ("http_proxy", proxy_url.clone()),
            ("no_proxy", ".invalid".to_string()),
        ],
    ] {
        let src = HttpSource::new("http://repo.invalid/", cfg(vars)).unwrap();
        match fetch(&src, FILE, None, None) {
            Err(SourceError::Transport { detail, .. }) => {
                assert!(detail.contains("resolving repo.invalid"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(proxy.requests().len(), before);
}

#[test]
fn ipv6_loopback_literal() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(10_000, 3);
    populate(dir.path(), &[(FILE, &data)]);
    let server = FaultyServer::start_on(dir.path(), "[::1]:0").unwrap();
    assert!(server.url().starts_with("http://[::1]:"));
    let src = source(&server.url());
    assert_eq!(
        fetch(&src, FILE, range(10, None), Some(9990)).unwrap(),
        data[10..]
    );
    let port = server.addr().port();
    assert_eq!(
        server.requests()[0].header("host"),
        Some(format!("[::1]:{port}").as_str())
    );
    assert!(FaultyServer::start_on(dir.path(), "0.0.0.0:0").is_err());
}
