//! Forward proxies, configured the way every Unix tool reads them: `https_proxy` /
//! `HTTPS_PROXY` for `https://` URLs, `http_proxy` / `HTTP_PROXY` for `http://` URLs, and
//! `no_proxy` / `NO_PROXY` for the hosts that bypass them. The lower-case name wins when both
//! are set (curl's order). `ALL_PROXY` and SOCKS are not supported.
//!
//! - A proxy is `http://[user:password@]host[:port][/]` (a missing scheme means `http://`, a
//!   missing port 80). Credentials are percent-decoded and sent as `Proxy-Authorization:
//!   Basic` to the proxy only. `https://` proxies (TLS to the proxy itself) and `socks*://`
//!   are refused with a clear error rather than silently ignored.
//! - `http://` URLs go through the proxy as absolute-form requests (`GET http://host/path`);
//!   `https://` URLs through a `CONNECT host:port` tunnel, TLS end-to-end with the origin.
//! - `NO_PROXY` is a list separated by commas and/or white space. Each entry is `*` (no proxy
//!   at all), a domain (`example.com` or `.example.com`: that host and every subdomain; a
//!   leading `*.` is read as `.`), an IP address (`10.1.2.3`, `::1`, `[::1]`), or a CIDR block
//!   (`10.0.0.0/8`, `fd00::/8`); any of them optionally with `:port` (then only that port
//!   bypasses). Matching is case-insensitive and ignores a trailing dot. Entries that parse as
//!   nothing sensible are ignored, as curl and Go do: a typo in a bypass list must not take
//!   the node off the network, it only means that host goes through the proxy.
//!
//! The environment is passed in ([`ProxyConfig::from_vars`]) so tests control it; the daemon
//! calls [`ProxyConfig::from_env`] once at start.

use std::net::IpAddr;

use base64::Engine as _;

use super::url::Url;

/// A proxy URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("proxy {variable}={value:?}: {reason}")]
pub struct ProxyError {
    /// The environment variable (or setting) it came from.
    pub variable: String,
    /// Its value, credentials removed.
    pub value: String,
    pub reason: String,
}

/// One forward proxy.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// `host:port` to connect to.
    pub host: String,
    pub port: u16,
    /// The `Proxy-Authorization` header value, when the URL had credentials.
    authorization: Option<String>,
}

impl std::fmt::Debug for Proxy {
    // Never print the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("authorization", &self.authorization.as_ref().map(|_| "…"))
            .finish()
    }
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "proxy [{}]:{}", self.host, self.port)
        } else {
            write!(f, "proxy {}:{}", self.host, self.port)
        }
    }
}

impl Proxy {
    /// Parse a proxy URL as found in `variable`.
    pub fn parse(variable: &str, value: &str) -> Result<Proxy, ProxyError> {
        let value = value.trim();
        let err = |reason: &str| ProxyError {
            variable: variable.to_string(),
            value: redact(value),
            reason: reason.to_string(),
        };
        let with_scheme = if value.contains("://") {
            value.to_string()
        } else {
            format!("http://{value}")
        };
        let url = Url::parse(&with_scheme).map_err(|e| err(&e.to_string()))?;
        match url.scheme() {
            "http" => {}
            "https" => return Err(err("TLS to the proxy itself (https://) is not supported")),
            other => return Err(err(&format!("proxy scheme {other:?} is not supported"))),
        }
        if url.query().is_some() || url.fragment().is_some() || !matches!(url.path(), "" | "/") {
            return Err(err("a proxy URL has no path, query or fragment"));
        }
        let host = match url.host() {
            Some(::url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
            Some(::url::Host::Ipv4(ip)) => ip.to_string(),
            Some(::url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(err("no host")),
        };
        let port = url.port_or_known_default().unwrap_or(80);
        let authorization = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| err("credentials are not UTF-8 after percent-decoding"))
            };
            let user = decode(url.username())?;
            let password = decode(url.password().unwrap_or(""))?;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            Some(format!("Basic {token}"))
        };
        Ok(Proxy {
            host,
            port,
            authorization,
        })
    }

    /// The `Proxy-Authorization` header value, if the proxy URL carried credentials.
    pub fn authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
    }
}

/// `value` without credentials, for messages.
fn redact(value: &str) -> String {
    let (scheme, rest) = match value.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), value),
    };
    let rest = match rest.rsplit_once('@') {
        Some((_, host)) => format!("…@{host}"),
        None => rest.to_string(),
    };
    format!("{scheme}{rest}").chars().take(256).collect()
}

/// One `NO_PROXY` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// `*`: nothing goes through a proxy.
    All,
    /// A host name and its subdomains (lower case, no leading or trailing dot).
    Domain(String, Option<u16>),
    /// An address block (a single address is a /32 or /128).
    Net(IpAddr, u8, Option<u16>),
}

/// A parsed `NO_PROXY` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    rules: Vec<Rule>,
}

impl NoProxy {
    /// Parse a `NO_PROXY` value (see the module docs); unusable entries are skipped.
    pub fn parse(value: &str) -> NoProxy {
        let rules = value
            .split(|c: char| c == ',' || c.is_ascii_whitespace())
            .filter(|e| !e.is_empty())
            .filter_map(parse_rule)
            .collect();
        NoProxy { rules }
    }

    /// Whether `host` (as in a URL: a name, an IPv4 address, or an IPv6 address with or
    /// without brackets) on `port` bypasses the proxy.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let ip: Option<IpAddr> = bare.parse().ok();
        self.rules.iter().any(|rule| match rule {
            Rule::All => true,
            Rule::Domain(domain, p) => {
                p.is_none_or(|p| p == port)
                    && ip.is_none()
                    && (host == *domain
                        || host
                            .strip_suffix(domain.as_str())
                            .is_some_and(|prefix| prefix.ends_with('.')))
            }
            Rule::Net(net, bits, p) => {
                p.is_none_or(|p| p == port) && ip.is_some_and(|ip| in_net(ip, *net, *bits))
            }
        })
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

fn parse_rule(entry: &str) -> Option<Rule> {
    let entry = entry.trim().to_ascii_lowercase();
    if entry == "*" {
        return Some(Rule::All);
    }
    // Port: `[v6]:port`, `v4:port`, `name:port`; a bare IPv6 address has several colons.
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse::<u16>().ok()?),
        };
        (inside.to_string(), port)
    } else if entry.matches(':').count() == 1 && !entry.contains('/') {
        let (h, p) = entry.split_once(':')?;
        (h.to_string(), Some(p.parse::<u16>().ok()?))
    } else {
        (entry.clone(), None)
    };
    if let Some((addr, bits)) = host.split_once('/') {
        let addr: IpAddr = addr.parse().ok()?;
        let bits: u8 = bits.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        return (bits <= max).then_some(Rule::Net(addr, bits, port));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        return Some(Rule::Net(ip, bits, port));
    }
    let domain = host
        .strip_prefix("*.")
        .unwrap_or(&host)
        .trim_start_matches('.')
        .trim_end_matches('.');
    let valid = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    valid.then(|| Rule::Domain(domain.to_string(), port))
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        // An IPv4-mapped IPv6 address is not matched against IPv4 rules: URLs name one form.
        _ => false,
    }
}

/// Which proxy, if any, each kind of URL goes through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    pub http: Option<Proxy>,
    pub https: Option<Proxy>,
    pub no_proxy: NoProxy,
}

impl ProxyConfig {
    /// No proxy at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// From the process environment.
    pub fn from_env() -> Result<Self, ProxyError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// From variables looked up by `get` (the environment, or a test's map). An empty value
    /// counts as unset.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, ProxyError> {
        let lookup = |lower: &'static str, upper: &'static str| {
            [lower, upper].into_iter().find_map(|name| {
                get(name)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (name, v))
            })
        };
        let proxy = |lower, upper| {
            lookup(lower, upper)
                .map(|(name, value)| Proxy::parse(name, &value))
                .transpose()
        };
        Ok(ProxyConfig {
            http: proxy("http_proxy", "HTTP_PROXY")?,
            https: proxy("https_proxy", "HTTPS_PROXY")?,
            no_proxy: lookup("no_proxy", "NO_PROXY")
                .map(|(_, v)| NoProxy::parse(&v))
                .unwrap_or_default(),
        })
    }

    /// The proxy `url` goes through, if any.
    pub fn for_url(&self, url: &Url) -> Option<&Proxy> {
        let proxy = match url.scheme() {
            "https" => self.https.as_ref(),
            "http" => self.http.as_ref(),
            _ => None,
        }?;
        let host = url.host_str().unwrap_or("");
        let port = url.port_or_known_default().unwrap_or(0);
        (!self.no_proxy.matches(host, port)).then_some(proxy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn parses_proxy_urls() {
        let p = Proxy::parse("HTTPS_PROXY", "http://proxy.corp:3128").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.authorization()),
            ("proxy.corp", 3128, None)
        );
        let p = Proxy::parse("http_proxy", "proxy.corp").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.corp", 80));
        let p = Proxy::parse("x", " http://[::1]:8080/ ").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 8080));
        assert_eq!(p.to_string(), "proxy [::1]:8080");
        let p = Proxy::parse("x", "http://al%40ice:p%3Ass%20w@127.0.0.1:1").unwrap();
        // base64("al@ice:p:ss w")
        assert_eq!(p.authorization(), Some("Basic YWxAaWNlOnA6c3Mgdw=="));
        assert!(!format!("{p:?}").contains("YWx"));
        let p = Proxy::parse("x", "http://bob@h:1").unwrap();
        assert_eq!(p.authorization(), Some("Basic Ym9iOg=="));
    }

    #[test]
    fn refuses_unusable_proxies_without_leaking_credentials() {
        for bad in [
            "https://p:1",
            "socks5://p:1080",
            "http://",
            "http://p:99999",
            "http://p:1/path",
            "http://p:1/?q",
            "http://u:secret@p:1/x",
            "http://u:%ff@p:1",
        ] {
            let e = Proxy::parse("HTTPS_PROXY", bad).unwrap_err();
            assert!(!e.to_string().contains("secret"), "{e}");
            assert!(e.to_string().contains("HTTPS_PROXY"), "{e}");
        }
    }

    #[test]
    fn no_proxy_rules() {
        let np = NoProxy::parse(
            "localhost, .internal.example ,corp.example:8443 10.0.0.0/8,192.168.1.5 [::1]:8080 fd00::/8,*.wild.test, bogus/x, a..b",
        );
        let yes = [
            ("localhost", 80),
            ("LOCALHOST.", 443),
            ("internal.example", 1),
            ("a.b.internal.example", 1),
            ("corp.example", 8443),
            ("x.corp.example", 8443),
            ("10.200.3.4", 80),
            ("192.168.1.5", 1),
            ("[::1]", 8080),
            ("::1", 8080),
            ("fd12::1", 1),
            ("wild.test", 1),
            ("deep.wild.test", 1),
        ];
        for (h, p) in yes {
            assert!(np.matches(h, p), "{h}:{p} should bypass");
        }
        let no = [
            ("notlocalhost", 80),
            ("internal.example.com", 1),
            ("xinternal.example", 1),
            ("corp.example", 443),
            ("11.0.0.1", 80),
            ("192.168.1.6", 1),
            ("[::1]", 80),
            ("::2", 8080),
            ("fe80::1", 1),
            ("10.0.0.1.evil.example", 1),
        ];
        for (h, p) in no {
            assert!(!np.matches(h, p), "{h}:{p} should use the proxy");
        }
        assert!(NoProxy::parse("*").matches("anything", 1));
        assert!(NoProxy::parse(" , ").is_empty());
        // An IP rule does not match names, a name rule does not match IPs.
        assert!(!NoProxy::parse("127.0.0.1").matches("localhost", 80));
        assert!(!NoProxy::parse("0").matches("0.0.0.0", 80));
    }

    #[test]
    fn config_from_vars() {
        let vars: HashMap<&str, &str> = [
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:2"),
            ("HTTP_PROXY", "http://plain:3"),
            ("NO_PROXY", "bypass.example"),
            ("no_proxy", ""),
        ]
        .into();
        let cfg = ProxyConfig::from_vars(|n| vars.get(n).map(|v| v.to_string())).unwrap();
        assert_eq!(cfg.https.as_ref().unwrap().host, "lower");
        assert_eq!(cfg.http.as_ref().unwrap().host, "plain");
        let u = |s| Url::parse(s).unwrap();
        assert_eq!(cfg.for_url(&u("https://x.example/")).unwrap().host, "lower");
        assert_eq!(cfg.for_url(&u("http://x.example/")).unwrap().host, "plain");
        assert!(cfg.for_url(&u("https://a.bypass.example/")).is_none());
        let bad = ProxyConfig::from_vars(|n| (n == "https_proxy").then(|| "socks5://x".into()));
        assert!(bad.is_err());
        assert_eq!(
            ProxyConfig::from_vars(|_| None).unwrap(),
            ProxyConfig::none()
        );
    }

    proptest! {
        #[test]
        fn no_proxy_never_panics(list in "\\PC{0,60}", host in "\\PC{0,30}", port in any::<u16>()) {
            let _ = NoProxy::parse(&list).matches(&host, port);
        }

        #[test]
        fn domain_rule_matches_exactly_its_subtree(label in "[a-z0-9]{1,10}", dom in "[a-z]{1,8}\\.[a-z]{2,4}",
                                                   port in 1u16..) {
            let np = NoProxy::parse(&format!(".{dom}"));
            let sub = format!("{label}.{dom}");
            let glued = format!("{label}{dom}");
            prop_assert!(np.matches(&dom, port));
            prop_assert!(np.matches(&sub, port));
            prop_assert!(!np.matches(&glued, port));
        }

        #[test]
        fn cidr_matches_like_a_mask(a in any::<u32>(), b in any::<u32>(), bits in 0u8..=32) {
            let np = NoProxy::parse(&format!("{}/{bits}", std::net::Ipv4Addr::from(a)));
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
            let host = std::net::Ipv4Addr::from(b).to_string();
            prop_assert_eq!(np.matches(&host, 80), a & mask == b & mask);
        }

        #[test]
        fn proxy_parse_never_panics(s in "\\PC{0,60}") {
            let _ = Proxy::parse("X", &s);
        }
    }
}
