//! TLS for the client: rustls with the ring provider (no OpenSSL, no aws-lc), HTTP/1.1 by
//! ALPN, SNI always sent for host names (never for IP addresses, per RFC 6066).
//!
//! Trust anchors, one of:
//! - the system bundle ([`SYSTEM_BUNDLE`], Debian's `ca-certificates`), when it exists and
//!   holds at least one certificate — the operator's own CA additions land there;
//! - otherwise the Mozilla roots compiled in (`webpki-roots`), so a node without the bundle
//!   can still reach a public CDN;
//! - or a pinned CA file (PEM, one or more certificates) that *replaces* both: a private
//!   repository's CA, and nothing else, is trusted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// Debian's CA bundle.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Which certificates the client trusts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Roots {
    /// [`SYSTEM_BUNDLE`], else the compiled-in Mozilla roots.
    #[default]
    System,
    /// Only the CA certificates in this PEM file.
    Pinned(PathBuf),
}

/// A CA file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("CA file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A description of the trust anchors, for error messages.
pub fn describe(roots: &Roots) -> String {
    match roots {
        Roots::System => "the system CA certificates".into(),
        Roots::Pinned(path) => format!("the pinned CA file {}", path.display()),
    }
}

fn load_pem(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let bytes = std::fs::read(path).map_err(|source| TlsSetupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |reason: String| TlsSetupError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| invalid(format!("not PEM: {e}")))?;
        store
            .add(cert)
            .map_err(|e| invalid(format!("not a usable CA certificate: {e}")))?;
    }
    if store.is_empty() {
        return Err(invalid("no CERTIFICATE block".into()));
    }
    Ok(store)
}

/// Build the rustls client configuration for `roots`.
pub fn client_config(roots: &Roots) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let store = match roots {
        Roots::Pinned(path) => load_pem(path)?,
        Roots::System => match load_pem(Path::new(SYSTEM_BUNDLE)) {
            Ok(store) => store,
            Err(_) => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        },
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What kind of certificate failure a TLS error is, when it is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertProblem {
    /// Not signed by a trusted CA (self-signed, private CA not pinned, wrong pinned CA).
    UnknownIssuer,
    /// Valid chain, but not for the host name or address in the URL.
    NameMismatch,
    /// Expired or not yet valid.
    Expired,
    /// Anything else (revoked, bad signature, bad encoding, protocol error …).
    Other,
}

/// Classify an error from the TLS handshake (rustls errors travel inside `io::Error`).
pub fn classify(err: &std::io::Error) -> CertProblem {
    use rustls::CertificateError as C;
    let Some(rustls::Error::InvalidCertificate(cert)) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return CertProblem::Other;
    };
    match cert {
        C::UnknownIssuer => CertProblem::UnknownIssuer,
        C::NotValidForName | C::NotValidForNameContext { .. } => CertProblem::NameMismatch,
        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
            CertProblem::Expired
        }
        _ => CertProblem::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_roots_always_load() {
        // Either the bundle or the compiled-in roots: never an error, never empty.
        client_config(&Roots::System).unwrap();
    }

    #[test]
    fn refuses_bad_ca_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            client_config(&Roots::Pinned(missing.clone())),
            Err(TlsSetupError::Read { path, .. }) if path == missing
        ));
        for (name, body) in [
            ("empty.pem", "".to_string()),
            ("text.pem", "hello\n".to_string()),
            (
                "garbage.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_string(),
            ),
            (
                "key-only.pem",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_string(),
            ),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            let err = client_config(&Roots::Pinned(p.clone())).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
