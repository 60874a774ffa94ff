//! The source of a node in server mode: the fleet server (`basalt-rollout`) offers a signed
//! release envelope and the repository holding its artifacts; this source serves that
//! envelope as the channel head and everything else (trust roots, frame indexes, blobs) from
//! that repository.
//!
//! Why as a [`Source`]: the engine then checks the offered release *exactly* as one read from
//! a static repository — the trust-root chain walk, signature threshold, expiry, os/arch/
//! channel, the anti-replay sequence and the downgrade rule — with no second code path that
//! could forget a check. A compromised server can offer an old signed release (refused by
//! sequence), a release of another channel (refused), or bytes nobody signed (refused); it
//! can only delay an update.
//!
//! Owns: holding the current offer and answering reads from it. Does not own: the check-in
//! protocol (`fleet`), the verification (the engine).

use std::io::{Cursor, Read};
use std::sync::{Arc, Mutex};

use super::http::HttpSource;
use super::{ByteRange, Source, SourceError};
use crate::http::HttpConfig;

/// The release a server offered, and where its artifacts are.
#[derive(Debug)]
struct Offer {
    envelope: Vec<u8>,
    repository: HttpSource,
}

/// The shared slot the daemon fills when an `update` directive arrives (cheap to clone).
#[derive(Debug, Clone)]
pub struct OfferedSource {
    /// The channel head's path (`basalt_manifest::repo::head_path`): reads of it are answered
    /// with the offered envelope.
    head: String,
    http: HttpConfig,
    offer: Arc<Mutex<Option<Offer>>>,
}

impl OfferedSource {
    /// A source with no offer yet; `head` is the channel head's path of the node's channel,
    /// `http` the client settings for the repositories offered.
    pub fn new(head: String, http: HttpConfig) -> Self {
        OfferedSource {
            head,
            http,
            offer: Arc::new(Mutex::new(None)),
        }
    }

    /// Replace the offer. The repository URL must be `http(s)://` (the wire crate checked).
    pub fn set_offer(&self, envelope: Vec<u8>, repository: &str) -> Result<(), SourceError> {
        let source =
            HttpSource::new(repository, self.http.clone()).map_err(|e| SourceError::Transport {
                location: repository.to_owned(),
                detail: e.to_string(),
            })?;
        let mut slot = self.offer.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(Offer {
            envelope,
            repository: source,
        });
        Ok(())
    }

    /// Whether an offer is held (for tests and logs).
    pub fn has_offer(&self) -> bool {
        self.offer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

impl Source for OfferedSource {
    fn open(
        &self,
        path: &str,
        range: Option<ByteRange>,
        expected_len: Option<u64>,
    ) -> Result<Box<dyn Read + Send>, SourceError> {
        let slot = self.offer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(offer) = slot.as_ref() else {
            return Err(SourceError::NotConfigured {
                location: format!("(fleet server: no release offered yet)/{path}"),
            });
        };
        if path == self.head {
            if range.is_some() {
                return Err(SourceError::Length {
                    location: self.location(path),
                    detail: "a range of the offered channel head was asked for".into(),
                });
            }
            return Ok(Box::new(Cursor::new(offer.envelope.clone())));
        }
        offer.repository.open(path, range, expected_len)
    }

    fn location(&self, path: &str) -> String {
        let slot = self.offer.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(_) if path == self.head => {
                format!("(release offered by the fleet server)/{path}")
            }
            Some(o) => o.repository.location(path),
            None => format!("(fleet server: no release offered yet)/{path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_is_the_offer_and_nothing_is_served_without_one() {
        let s = OfferedSource::new(
            "channels/stable/x86_64/head.signed".into(),
            HttpConfig::default(),
        );
        let e = s
            .read_small("channels/stable/x86_64/head.signed", 1024)
            .unwrap_err();
        assert!(matches!(e, SourceError::NotConfigured { .. }), "{e}");
        s.set_offer(b"envelope".to_vec(), "http://127.0.0.1:9/repo/")
            .unwrap();
        assert!(s.has_offer());
        assert_eq!(
            s.read_small("channels/stable/x86_64/head.signed", 1024)
                .unwrap(),
            b"envelope"
        );
        assert!(s
            .location("blobs/sha256/00")
            .starts_with("http://127.0.0.1:9/repo/blobs/"));
        assert!(s.set_offer(Vec::new(), "not a url").is_err());
    }
}
