//! URLs the client accepts, and redirect targets (`Location`, RFC 9110 §10.2.2).
//!
//! Rules, and why:
//! - Only `http` and `https`: a `Location: file:///etc/shadow` or `ftp://…` is refused.
//! - Never from `https` down to `http`: TLS would protect the first hop only. (The content is
//!   signed anyway, but a downgrade hands a network attacker the timing, the body and a place
//!   to stall us; no CDN needs it.)
//! - Another host is allowed: release repositories are commonly served by a CDN or a mirror
//!   that redirects. Nothing we send is a secret for the origin (no cookies, no
//!   `Authorization`), and proxy credentials only ever go to the proxy.
//! - No credentials in URLs (`https://user:pass@host/`): we have no use for them and they
//!   would end up in logs.
//! - Relative references are resolved against the URL that answered (RFC 3986 §5), fragments
//!   are dropped (never sent).

pub use ::url::Url;

/// Why a URL or a redirect target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{url:?} is not a valid URL: {reason}")]
    Invalid { url: String, reason: String },
    #[error("{url}: scheme {scheme:?} is not supported (only http and https)")]
    Scheme { url: String, scheme: String },
    #[error("{url}: credentials in URLs are not supported")]
    Credentials { url: String },
    #[error("redirect from {from} to {to} would downgrade https to http")]
    Downgrade { from: String, to: String },
    #[error("{url}: the Location header is empty or not visible ASCII")]
    BadLocation { url: String },
}

/// Parse and check a URL the client is asked to fetch.
pub fn parse(url: &str) -> Result<Url, UrlError> {
    let parsed = Url::parse(url).map_err(|e| UrlError::Invalid {
        url: url.chars().take(256).collect(),
        reason: e.to_string(),
    })?;
    check(parsed)
}

/// Check scheme, host and credentials of an already parsed URL; drop its fragment.
pub fn check(mut url: Url) -> Result<Url, UrlError> {
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(UrlError::Scheme {
                scheme: other.to_string(),
                url: url.to_string(),
            })
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Do not echo the credentials back in the message.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        return Err(UrlError::Credentials {
            url: url.to_string(),
        });
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::Invalid {
            url: url.to_string(),
            reason: "no host".into(),
        });
    }
    url.set_fragment(None);
    Ok(url)
}

/// Resolve a redirect's `Location` header (raw bytes) against the URL that answered.
pub fn resolve_location(base: &Url, location: &[u8]) -> Result<Url, UrlError> {
    let bad = || UrlError::BadLocation {
        url: base.to_string(),
    };
    let location = std::str::from_utf8(location).map_err(|_| bad())?.trim();
    if location.is_empty() || !location.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    let target = base.join(location).map_err(|e| UrlError::Invalid {
        url: location.chars().take(256).collect(),
        reason: e.to_string(),
    })?;
    let target = check(target)?;
    if base.scheme() == "https" && target.scheme() == "http" {
        return Err(UrlError::Downgrade {
            from: base.to_string(),
            to: target.to_string(),
        });
    }
    Ok(target)
}

/// `host:port` of a URL, the port always written (the form of `CONNECT` and of messages).
pub fn authority(url: &Url) -> String {
    let port = url.port_or_known_default().unwrap_or(0);
    match url.host() {
        Some(::url::Host::Ipv6(ip)) => format!("[{ip}]:{port}"),
        Some(host) => format!("{host}:{port}"),
        None => format!(":{port}"),
    }
}

/// The `Host` header value: the host, with the port only when it is not the scheme's default.
pub fn host_header(url: &Url) -> String {
    let host = match url.host() {
        Some(::url::Host::Ipv6(ip)) => format!("[{ip}]"),
        Some(host) => host.to_string(),
        None => String::new(),
    };
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

/// The request target in origin form: path and query.
pub fn origin_form(url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn base() -> Url {
        parse("https://repo.example.com/basalt/stable/head.signed?x=1").unwrap()
    }

    #[test]
    fn accepts_http_and_https_only() {
        assert!(parse("http://127.0.0.1:8080/x").is_ok());
        assert!(parse("https://[::1]/x").is_ok());
        for bad in [
            "file:///etc/passwd",
            "ftp://h/x",
            "data:,x",
            "gopher://h/",
            "h/x",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
        assert!(matches!(
            parse("https://u:secret@h/x"),
            Err(UrlError::Credentials { url }) if !url.contains("secret")
        ));
        assert_eq!(parse("http://h/x#frag").unwrap().as_str(), "http://h/x");
    }

    #[test]
    fn resolves_relative_locations() {
        let b = base();
        let cases = [
            ("next", "https://repo.example.com/basalt/stable/next"),
            ("../beta/a", "https://repo.example.com/basalt/beta/a"),
            ("/root", "https://repo.example.com/root"),
            (
                "?y=2",
                "https://repo.example.com/basalt/stable/head.signed?y=2",
            ),
            ("//cdn.example.net/b/c", "https://cdn.example.net/b/c"),
            (
                "https://mirror.example.org:8443/z",
                "https://mirror.example.org:8443/z",
            ),
            (
                "  spaced  ",
                "https://repo.example.com/basalt/stable/spaced",
            ),
            ("x#frag", "https://repo.example.com/basalt/stable/x"),
        ];
        for (loc, want) in cases {
            assert_eq!(
                resolve_location(&b, loc.as_bytes()).unwrap().as_str(),
                want,
                "{loc}"
            );
        }
    }

    #[test]
    fn refuses_bad_locations() {
        let b = base();
        assert!(matches!(
            resolve_location(&b, b"http://repo.example.com/x"),
            Err(UrlError::Downgrade { .. })
        ));
        assert!(matches!(
            resolve_location(&b, b"//h/x").map(|u| u.scheme().to_string()),
            Ok(s) if s == "https"
        ));
        for bad in [&b""[..], b"   ", b"a b", b"\xff\xfe", b"x\ty", b"/\x7f"] {
            assert!(matches!(
                resolve_location(&b, bad),
                Err(UrlError::BadLocation { .. })
            ));
        }
        assert!(matches!(
            resolve_location(&b, b"file:///etc/shadow"),
            Err(UrlError::Scheme { .. })
        ));
        assert!(matches!(
            resolve_location(&b, b"https://u:p@h/"),
            Err(UrlError::Credentials { .. })
        ));
        assert!(resolve_location(&b, b"http://[::1").is_err());
        // http -> https is fine (an upgrade).
        let plain = parse("http://h/x").unwrap();
        assert_eq!(
            resolve_location(&plain, b"https://h/x").unwrap().as_str(),
            "https://h/x"
        );
    }

    #[test]
    fn authority_and_host_header() {
        let u = parse("https://[::1]:8443/a?b").unwrap();
        assert_eq!(authority(&u), "[::1]:8443");
        assert_eq!(host_header(&u), "[::1]:8443");
        assert_eq!(origin_form(&u), "/a?b");
        let u = parse("http://Example.COM/").unwrap();
        assert_eq!(authority(&u), "example.com:80");
        assert_eq!(host_header(&u), "example.com");
    }

    proptest! {
        #[test]
        fn resolution_never_panics_and_never_downgrades(loc in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(u) = resolve_location(&base(), &loc) {
                prop_assert_eq!(u.scheme(), "https");
                prop_assert!(u.fragment().is_none());
                prop_assert!(u.username().is_empty());
            }
        }
    }
}
