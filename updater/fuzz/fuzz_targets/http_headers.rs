//! Fuzzes every header the HTTP client parses itself: `Content-Range` (206 and 416 forms, and
//! the check against the asked range), `Location` resolution, proxy URLs and `NO_PROXY`
//! lists. Never panics; the invariants below hold for any input.
//!
//! Input: up to four fields separated by `\n` — a header value, a host, a NO_PROXY list, and a
//! port/offset seed. Seeds are committed in `seeds/http_headers/`:
//! `cargo +nightly fuzz run http_headers corpus/http_headers seeds/http_headers`.

#![no_main]

use basalt_updater::http::proxy::{NoProxy, Proxy, ProxyConfig};
use basalt_updater::http::range::{
    check_reply, parse_content_range, parse_unsatisfied, range_header,
};
use basalt_updater::http::url::{parse, resolve_location, Url};
use basalt_updater::source::ByteRange;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut fields = data.splitn(4, |b| *b == b'\n');
    let value = fields.next().unwrap_or_default();
    let host = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let list = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let seed = fields.next().unwrap_or_default();
    let n = seed
        .iter()
        .take(8)
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let port = (n & 0xffff) as u16;

    // Content-Range: a parsed value prints back to itself, and checking it never panics.
    if let Ok(text) = std::str::from_utf8(value) {
        if let Ok(complete) = parse_unsatisfied(text) {
            assert_eq!(
                parse_unsatisfied(&format!("bytes */{complete}")),
                Ok(complete)
            );
        }
        if let Ok(cr) = parse_content_range(text) {
            assert!(cr.first <= cr.last);
            assert_eq!(parse_content_range(&cr.to_string()), Ok(cr));
            for len in [None, Some(n), Some(cr.len())] {
                let asked = ByteRange {
                    offset: cr.first,
                    len,
                };
                if let Ok(body) = check_reply(asked, cr) {
                    assert_eq!(body, cr.len());
                }
                let _ = range_header(asked);
            }
        }
    }

    // Location: only http(s), never a downgrade from https, no credentials, no fragment;
    // resolving the result's own text again gives the same URL.
    for base in ["https://repo.example/a/b/c?q", "http://10.0.0.1:8080/x/"] {
        let base: Url = parse(base).expect("fixed base");
        if let Ok(target) = resolve_location(&base, value) {
            assert!(matches!(target.scheme(), "http" | "https"));
            assert!(!(base.scheme() == "https" && target.scheme() == "http"));
            assert!(target.username().is_empty() && target.password().is_none());
            assert!(target.fragment().is_none());
            let again = resolve_location(&base, target.as_str().as_bytes()).expect("re-resolve");
            assert_eq!(again, target);
        }
    }

    // Proxies: a parsed proxy never shows its credentials.
    if let Ok(text) = std::str::from_utf8(value) {
        if let Ok(proxy) = Proxy::parse("HTTPS_PROXY", text) {
            assert!(!proxy.to_string().contains('@'));
            assert!(!format!("{proxy:?}").contains("Basic"));
        }
        if let Err(e) = Proxy::parse("HTTPS_PROXY", text) {
            let _ = e.to_string();
        }
    }
    let no_proxy = NoProxy::parse(&list);
    let matched = no_proxy.matches(&host, port);
    if NoProxy::parse("*").matches(&host, port) {
        // `*` matches everything; adding entries to a list never un-matches a host.
        let wider = NoProxy::parse(&format!("{list},*"));
        assert!(wider.matches(&host, port));
        if matched {
            assert!(NoProxy::parse(&format!("{list},example.invalid")).matches(&host, port));
        }
    }
    let config = ProxyConfig::from_vars(|name| match name {
        "https_proxy" => std::str::from_utf8(value).ok().map(str::to_string),
        "no_proxy" => Some(list.clone()),
        _ => None,
    });
    if let (Ok(config), Ok(url)) = (config, parse(&format!("https://{host}:{port}/x"))) {
        let _ = config.for_url(&url);
    }
});
