//! The HTTP release source against real peers on 127.0.0.1: Debian's nginx (HTTP and HTTPS
//! with a throwaway CA made by `openssl`) and tinyproxy as the forward proxy. Each test starts
//! its own servers with generated configs under `build/vm/<test>/` and kills them by PID.

mod http_common;

use std::io::Read;
use std::path::{Path, PathBuf};

use basalt_tests::vm::scenario_dir;
use basalt_tests::web::{Nginx, NginxOptions, TestPki, Tinyproxy};
use basalt_updater::http::{CertProblem, ProxyConfig, Roots};
use basalt_updater::source::http::HttpSource;
use basalt_updater::source::{Source, SourceError};
use http_common::{config, content, fetch, into_source_error, populate, range, source};

const FILE: &str = "blobs/sha256/0123abcd";

fn repo(dir: &Path, len: usize) -> (PathBuf, Vec<u8>) {
    let root = dir.join("www");
    let data = content(len, 42);
    populate(
        &root,
        &[
            (FILE, &data),
            ("channels/stable/x86_64/head.signed", b"head"),
        ],
    );
    (root, data)
}

#[test]
fn nginx_whole_files_ranges_resume_and_not_found() {
    let dir = scenario_dir("http-nginx-basic").unwrap();
    let (root, data) = repo(&dir, 1 << 20);
    let nginx = Nginx::start(&dir.join("nginx"), &root).unwrap();
    let src = source(&nginx.url());
    let len = data.len() as u64;

    assert_eq!(fetch(&src, FILE, None, Some(len)).unwrap(), data);
    assert_eq!(
        src.read_small("channels/stable/x86_64/head.signed", 64)
            .unwrap(),
        b"head"
    );
    assert_eq!(
        fetch(&src, FILE, range(1000, None), Some(len - 1000)).unwrap(),
        data[1000..]
    );
    assert_eq!(
        fetch(&src, FILE, range(4096, Some(8192)), Some(8192)).unwrap(),
        data[4096..12288]
    );
    assert_eq!(
        fetch(&src, FILE, range(len - 1, Some(1)), Some(1)).unwrap(),
        data[data.len() - 1..]
    );

    // Resume: read part of the file, drop the reader (a broken download), continue from there.
    let mut first = vec![0u8; 300_000];
    src.open(FILE, None, Some(len))
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    let rest = fetch(
        &src,
        FILE,
        range(first.len() as u64, None),
        Some(len - first.len() as u64),
    )
    .unwrap();
    assert_eq!([first, rest].concat(), data);

    // Wrong expectations: refused before the body is read.
    assert!(matches!(
        fetch(&src, FILE, None, Some(len + 1)),
        Err(SourceError::Length { .. })
    ));
    assert!(matches!(
        fetch(&src, FILE, range(10, None), Some(len)),
        Err(SourceError::Length { .. })
    ));
    // Beyond the end: nginx answers 416. Exactly at the end, an open range is empty (as the
    // folder source has it).
    assert!(matches!(
        fetch(&src, FILE, range(len + 1, None), None),
        Err(SourceError::Length { .. })
    ));
    assert_eq!(fetch(&src, FILE, range(len, None), Some(0)).unwrap(), b"");
    assert!(matches!(
        fetch(&src, FILE, range(len, None), Some(1)),
        Err(SourceError::Length { .. })
    ));
    assert!(matches!(
        fetch(&src, FILE, range(len - 5, Some(10)), Some(10)),
        Err(SourceError::Length { .. })
    ));
    match fetch(&src, "roots/2.root.json", None, None) {
        Err(SourceError::NotFound { location }) => {
            assert_eq!(location, format!("{}roots/2.root.json", nginx.url()))
        }
        other => panic!("{other:?}"),
    }

    let log = nginx.access_log().unwrap();
    let ranged: Vec<_> = log.iter().filter(|a| a.range.is_some()).collect();
    assert!(ranged
        .iter()
        .any(|a| a.range.as_deref() == Some("bytes=4096-12287")
            && a.status == 206
            && a.body_bytes == 8192));
    assert!(ranged
        .iter()
        .any(|a| a.range.as_deref() == Some("bytes=300000-") && a.status == 206));
    assert!(log
        .iter()
        .any(|a| a.status == 404 && a.request.contains("/roots/2.root.json")));
    assert!(
        log.iter()
            .all(|a| a.user_agent.starts_with("basalt-updated/")),
        "{log:?}"
    );
}

/// The child half of the memory test: fetch `BASALT_HTTP_RSS_URL` through the source,
/// hashing, and print the digest. Run only by the parent below.
#[test]
#[ignore = "helper process of big_file_memory_is_bounded"]
fn rss_child_fetch() {
    let Ok(url) = std::env::var("BASALT_HTTP_RSS_URL") else {
        return;
    };
    let expected: u64 = std::env::var("BASALT_HTTP_RSS_LEN")
        .unwrap()
        .parse()
        .unwrap();
    let (base, path) = url.rsplit_once('/').unwrap();
    let src = HttpSource::new(base, config()).unwrap();
    let mut reader = src.open(path, None, Some(expected)).unwrap();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(into_source_error).unwrap();
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        total += n as u64;
    }
    assert_eq!(total, expected);
    println!("DIGEST {}", hex(ctx.finish().as_ref()));
    // This process's own peak (the parent's rusage of a child also counts the parent's pages
    // shared before exec, so the child reports itself).
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    println!("{hwm}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Peak RSS of a child process fetching 256 MiB through the source: bounded by a few chunks,
/// not by the file size.
#[test]
fn big_file_memory_is_bounded() {
    const MIB: usize = 1 << 20;
    let dir = scenario_dir("http-nginx-rss").unwrap();
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    // 256 MiB of a 1 MiB pseudo-random block with a counter, hashed as it is written.
    let block = content(MIB, 9);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(root.join("big.bin")).unwrap());
        for i in 0..256u32 {
            let mut b = block.clone();
            b[..4].copy_from_slice(&i.to_le_bytes());
            ctx.update(&b);
            f.write_all(&b).unwrap();
        }
    }
    let digest = hex(ctx.finish().as_ref());
    let nginx = Nginx::start(&dir.join("nginx"), &root).unwrap();

    let exe = std::env::current_exe().unwrap();
    let output = std::process::Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "rss_child_fetch",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BASALT_HTTP_RSS_URL", format!("{}big.bin", nginx.url()))
        .env("BASALT_HTTP_RSS_LEN", (256 * MIB).to_string())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed:\n{out}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(out.contains(&format!("DIGEST {digest}")), "{out}");
    let peak_kib: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM line in:\n{out}"));
    eprintln!("peak RSS of a 256 MiB fetch through HttpSource: {peak_kib} KiB");
    // The test binary alone is ~10 MiB; the transfer must add a few hundred KiB, not the
    // file: 32 MiB is far below 256 MiB and far above any fixed overhead.
    assert!(peak_kib < 32 * 1024, "peak RSS {peak_kib} KiB");
    assert_eq!(
        nginx.access_log().unwrap().last().unwrap().body_bytes,
        256 * MIB as u64
    );
}

fn tls_config(roots: Roots) -> basalt_updater::http::HttpConfig {
    basalt_updater::http::HttpConfig { roots, ..config() }
}

fn tls_error(src: &HttpSource) -> String {
    match fetch(src, FILE, None, None) {
        Err(SourceError::Transport { detail, .. }) => detail,
        other => panic!("expected a TLS transport error, got {other:?}"),
    }
}

#[test]
fn tls_pinned_ca_unknown_ca_wrong_name_and_downgrade() {
    let dir = scenario_dir("http-nginx-tls").unwrap();
    let (root, data) = repo(&dir, 100_000);
    let pki = TestPki::generate(&dir.join("pki"), "Basalt test CA").unwrap();
    let other = TestPki::generate(&dir.join("other-pki"), "Another CA").unwrap();
    let plain = Nginx::start(&dir.join("nginx-plain"), &root).unwrap();
    let options = NginxOptions {
        tls: Some(pki.clone()),
        server_extra: format!(
            "location = /downgrade {{ return 302 {}{FILE}; }}\n        location = /hop {{ return 301 /{FILE}; }}",
            plain.url()
        ),
    };
    let nginx = Nginx::start_with(&dir.join("nginx-tls"), &root, &options).unwrap();
    let url = nginx.url();
    assert!(url.starts_with("https://localhost:"));

    // Pinned CA: accepted; a redirect within https too.
    let pinned = HttpSource::new(&url, tls_config(Roots::Pinned(pki.ca.clone()))).unwrap();
    assert_eq!(
        fetch(&pinned, FILE, range(10, None), Some(99_990)).unwrap(),
        data[10..]
    );
    assert_eq!(fetch(&pinned, "hop", None, None).unwrap(), data);

    // System roots do not know the test CA.
    let system = HttpSource::new(&url, tls_config(Roots::System)).unwrap();
    let detail = tls_error(&system);
    assert!(
        detail.contains("not signed by the system CA certificates"),
        "{detail}"
    );
    // Another pinned CA: refused, naming the file.
    let wrong = HttpSource::new(&url, tls_config(Roots::Pinned(other.ca.clone()))).unwrap();
    let detail = tls_error(&wrong);
    assert!(
        detail.contains("not signed by the pinned CA file") && detail.contains("other-pki"),
        "{detail}"
    );
    // Right CA, wrong name: the certificate names localhost only.
    let by_ip = HttpSource::new(
        &url.replace("localhost", "127.0.0.1"),
        tls_config(Roots::Pinned(pki.ca.clone())),
    )
    .unwrap();
    let detail = tls_error(&by_ip);
    assert!(detail.contains("not valid for this host name"), "{detail}");
    // https -> http redirect: refused, and nothing was fetched over http.
    match fetch(&pinned, "downgrade", None, None) {
        Err(SourceError::Transport { detail, .. }) => {
            assert!(detail.contains("downgrade"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    assert!(plain.access_log().unwrap().is_empty());
    // Plain HTTP spoken to the TLS port is a clear error, not a hang.
    let confused = source(&url.replace("https://", "http://"));
    assert!(fetch(&confused, FILE, None, None).is_err());

    // The classification is typed for the daemon too.
    let client = basalt_updater::http::HttpClient::new(tls_config(Roots::System)).unwrap();
    let rt = tokio_rt();
    let err = rt
        .block_on(client.send(&basalt_updater::http::Request::get(
            basalt_updater::http::url::parse(&format!("{url}{FILE}")).unwrap(),
        )))
        .unwrap_err();
    assert!(matches!(
        err.kind,
        basalt_updater::http::HttpErrorKind::Tls {
            problem: CertProblem::UnknownIssuer,
            ..
        }
    ));
}

/// The daemon's situation: a current-thread runtime calling the async client directly.
fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn through_tinyproxy_http_https_no_proxy_and_credentials() {
    let dir = scenario_dir("http-proxy").unwrap();
    let (root, data) = repo(&dir, 200_000);
    let pki = TestPki::generate(&dir.join("pki"), "Basalt proxy test CA").unwrap();
    let plain = Nginx::start(&dir.join("nginx-plain"), &root).unwrap();
    let tls = Nginx::start_with(
        &dir.join("nginx-tls"),
        &root,
        &NginxOptions {
            tls: Some(pki.clone()),
            ..NginxOptions::default()
        },
    )
    .unwrap();
    let creds = ("basalt", "s3cret");
    let proxy = Tinyproxy::start(&dir.join("proxy"), Some(creds)).unwrap();
    let with_proxy = |vars: &[(&str, String)]| {
        let proxy = ProxyConfig::from_vars(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        })
        .unwrap();
        basalt_updater::http::HttpConfig {
            proxy,
            roots: Roots::Pinned(pki.ca.clone()),
            ..config()
        }
    };
    let good = with_proxy(&[
        ("http_proxy", proxy.url(Some(creds))),
        ("HTTPS_PROXY", proxy.url(Some(creds))),
    ]);

    // HTTP through the proxy (absolute form), with a range.
    let src = HttpSource::new(&plain.url(), good.clone()).unwrap();
    assert_eq!(
        fetch(&src, FILE, range(100, None), Some(199_900)).unwrap(),
        data[100..]
    );
    // HTTPS through a CONNECT tunnel; TLS is end to end (the pinned CA still decides).
    let src = HttpSource::new(&tls.url(), good.clone()).unwrap();
    assert_eq!(fetch(&src, FILE, None, Some(200_000)).unwrap(), data);
    let log = proxy.log();
    assert!(log.contains("CONNECT"), "{log}");
    assert!(
        log.contains(&format!("127.0.0.1:{}", plain.port())),
        "{log}"
    );
    // Counted by the connections the proxy accepted, not by the log's length: tinyproxy
    // writes a tunnel's "Closed connection" line when it notices the close, which can be
    // after this point.
    let accepted = || proxy.log().matches("Connect (file descriptor").count();
    let before = accepted();

    // NO_PROXY: these go direct (the proxy log does not grow).
    for no_proxy in ["127.0.0.1", "localhost", "*", "127.0.0.0/8", ".localhost"] {
        let cfg = with_proxy(&[
            ("http_proxy", proxy.url(Some(creds))),
            ("https_proxy", proxy.url(Some(creds))),
            ("NO_PROXY", format!("example.com, {no_proxy}")),
        ]);
        let direct = if no_proxy.contains("localhost") || no_proxy == "*" {
            tls.url()
        } else {
            plain.url()
        };
        let src = HttpSource::new(&direct, cfg).unwrap();
        assert_eq!(fetch(&src, FILE, None, None).unwrap(), data, "{no_proxy}");
    }
    assert_eq!(
        accepted(),
        before,
        "NO_PROXY requests went through the proxy"
    );
    // A NO_PROXY entry for another port does not bypass.
    let cfg = with_proxy(&[
        ("http_proxy", proxy.url(Some(creds))),
        ("no_proxy", "127.0.0.1:1".into()),
    ]);
    let src = HttpSource::new(&plain.url(), cfg).unwrap();
    assert_eq!(fetch(&src, FILE, None, None).unwrap(), data);
    assert!(accepted() > before);

    // Wrong credentials: the proxy refuses; typed, naming the proxy.
    let bad = with_proxy(&[
        ("http_proxy", proxy.url(Some(("basalt", "wrong")))),
        ("https_proxy", proxy.url(Some(("basalt", "wrong")))),
    ]);
    let src = HttpSource::new(&tls.url(), bad.clone()).unwrap();
    match fetch(&src, FILE, None, None) {
        Err(SourceError::Transport { detail, .. }) => {
            // tinyproxy answers a refused CONNECT with 401, a refused GET with 407.
            assert!(
                detail.contains("refused the tunnel") && detail.contains("HTTP 40"),
                "{detail}"
            );
            assert!(!detail.contains("wrong"), "credentials leaked: {detail}");
        }
        other => panic!("{other:?}"),
    }
    let src = HttpSource::new(&plain.url(), bad).unwrap();
    assert!(matches!(
        fetch(&src, FILE, None, None),
        Err(SourceError::Status {
            status: 401 | 407,
            ..
        })
    ));
    // A proxy that is not there.
    let port = basalt_tests::web::free_port().unwrap();
    let gone = with_proxy(&[("https_proxy", format!("http://127.0.0.1:{port}"))]);
    let src = HttpSource::new(&tls.url(), gone).unwrap();
    match fetch(&src, FILE, None, None) {
        Err(SourceError::Transport { detail, .. }) => {
            assert!(detail.contains(&port.to_string()), "{detail}")
        }
        other => panic!("{other:?}"),
    }
}
