//! Trust roots: the Ed25519 keys and threshold a node accepts, rotated TUF-style.
//!
//! A trust root is itself a signed envelope (payload type [`TRUST_PAYLOAD_TYPE`]) carrying a
//! [`TrustRootDocument`]. Rules:
//! - the initial root (shipped in the image: trust on first use) must be signed by a threshold
//!   of its own keys;
//! - a new root is accepted from the current one only if its `generation` is exactly
//!   current + 1 and it is signed by a threshold of the CURRENT keys AND a threshold of its
//!   OWN keys (TUF `root.json` rotation). The current keys are checked first, before the new
//!   payload is even parsed, so unauthenticated JSON is never interpreted;
//! - duplicate keys in a root are an error; `1 <= threshold <= keys`;
//! - an optional `expires_at` stops the root from verifying releases after that instant
//!   ([`crate::verify_release`]); it does not block rotating away from it (TUF allows walking
//!   through expired intermediate roots), and the usr-hash check at boot does not look at
//!   time (the initramfs has no trustworthy clock).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::envelope::{require_threshold, Envelope};
use crate::error::{Document, Error, Result};
use crate::keys::{KeyId, PublicKey};
use crate::manifest::{check_schema_version, rfc3339, SCHEMA_VERSION};

/// DSSE payload type of trust root envelopes.
pub const TRUST_PAYLOAD_TYPE: &str = "application/vnd.basalt.trust.v1+json";

/// Trust root envelopes larger than this (64 KiB) are refused before parsing. A root with
/// dozens of keys and signatures is a few KiB.
pub const MAX_TRUST_ROOT_BYTES: usize = 64 * 1024;

/// Key algorithms a trust root may list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyAlgorithm {
    /// Ed25519 (RFC 8032), verified with ring.
    Ed25519,
}

/// One key of a trust root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustKey {
    /// Always `ed25519` in schema 1.
    pub algorithm: KeyAlgorithm,
    /// The raw public key, 64 lowercase hex digits.
    pub public_key: PublicKey,
}

/// The signed payload of a trust root envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRootDocument {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u64,
    /// 1 for the first root, +1 per rotation.
    pub generation: u64,
    /// How many distinct keys must sign.
    pub threshold: u64,
    /// The keys.
    pub keys: Vec<TrustKey>,
    /// Optional expiry of this root.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339::option"
    )]
    pub expires_at: Option<DateTime<Utc>>,
}

impl TrustRootDocument {
    /// A schema-1 document for Ed25519 `keys`.
    pub fn new(
        generation: u64,
        threshold: u64,
        keys: &[PublicKey],
        expires_at: Option<DateTime<Utc>>,
    ) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            generation,
            threshold,
            keys: keys
                .iter()
                .map(|k| TrustKey {
                    algorithm: KeyAlgorithm::Ed25519,
                    public_key: *k,
                })
                .collect(),
            expires_at,
        }
    }

    /// Parses and validates the JSON payload of a trust root envelope.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        check_schema_version(bytes, Document::TrustRoot)?;
        let doc: Self = serde_json::from_slice(bytes).map_err(|source| Error::MalformedJson {
            document: Document::TrustRoot,
            source,
        })?;
        doc.validate()?;
        Ok(doc)
    }

    /// Compact JSON, the form that gets signed.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|source| Error::EncodeJson {
            document: Document::TrustRoot,
            source,
        })
    }

    /// Schema rules: version, generation >= 1, no duplicate keys, 1 <= threshold <= keys.
    pub fn validate(&self) -> Result<()> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(Error::UnsupportedSchemaVersion {
                document: Document::TrustRoot,
                found: self.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        if self.generation == 0 {
            return Err(Error::InvalidContent {
                document: Document::TrustRoot,
                reason: "generation starts at 1".into(),
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for key in &self.keys {
            if !seen.insert(key.public_key) {
                return Err(Error::DuplicateTrustKey {
                    generation: self.generation,
                    keyid: key.public_key.key_id().0,
                });
            }
        }
        let count = self.keys.len();
        if self.threshold == 0 || self.threshold > count as u64 {
            return Err(Error::InvalidThreshold {
                generation: self.generation,
                threshold: self.threshold,
                keys: count,
            });
        }
        Ok(())
    }
}

/// A verified trust root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRoot {
    document: TrustRootDocument,
    keys: Vec<PublicKey>,
    threshold: usize,
}

fn signers_of(generation: u64) -> String {
    format!("keys of trust root generation {generation}")
}

impl TrustRoot {
    /// Accepts an initial (anchor) root: signed by a threshold of its own keys. Use for the
    /// root shipped in the image or configured by an operator; any generation is allowed, as
    /// a later image ships the latest root.
    pub fn from_initial_envelope(bytes: &[u8]) -> Result<Self> {
        let envelope = Envelope::from_json(bytes, MAX_TRUST_ROOT_BYTES, Document::TrustRoot)?;
        envelope.expect_type(TRUST_PAYLOAD_TYPE, Document::TrustRoot)?;
        // Trust on first use: the keys come from the payload itself.
        let root = Self::from_document(TrustRootDocument::from_json(&envelope.payload)?)?;
        let signers = signers_of(root.generation());
        let verified =
            envelope.verify_signatures(&root.keys, &signers, false, Document::TrustRoot)?;
        require_threshold(
            &verified,
            &root.keys,
            root.threshold,
            &signers,
            Document::TrustRoot,
        )?;
        Ok(root)
    }

    /// Accepts the next root from this one (see the module docs for the rules) and returns
    /// it; `self` is unchanged.
    pub fn rotate(&self, bytes: &[u8]) -> Result<TrustRoot> {
        let envelope = Envelope::from_json(bytes, MAX_TRUST_ROOT_BYTES, Document::TrustRoot)?;
        envelope.expect_type(TRUST_PAYLOAD_TYPE, Document::TrustRoot)?;
        // 1. A threshold of the current keys, before parsing the payload. Signatures by other
        //    keys are skipped here; they must be new keys, checked in step 3.
        let old_signers = format!("{} (the current root)", signers_of(self.generation()));
        let by_old =
            envelope.verify_signatures(&self.keys, &old_signers, true, Document::TrustRoot)?;
        require_threshold(
            &by_old,
            &self.keys,
            self.threshold,
            &old_signers,
            Document::TrustRoot,
        )?;
        // 2. The payload, now authenticated by the current root.
        let next = Self::from_document(TrustRootDocument::from_json(&envelope.payload)?)?;
        if Some(next.generation()) != self.generation().checked_add(1) {
            return Err(Error::TrustGenerationNotNext {
                current: self.generation(),
                offered: next.generation(),
            });
        }
        // 3. Every signature by a current or new key, and a threshold of the new keys.
        let mut union = self.keys.clone();
        union.extend(next.keys.iter().filter(|k| !self.keys.contains(k)));
        let new_signers = format!("{} (the new root)", signers_of(next.generation()));
        let all = envelope.verify_signatures(
            &union,
            &format!(
                "keys of trust root generations {} and {}",
                self.generation(),
                next.generation()
            ),
            false,
            Document::TrustRoot,
        )?;
        require_threshold(
            &all,
            &next.keys,
            next.threshold,
            &new_signers,
            Document::TrustRoot,
        )?;
        Ok(next)
    }

    /// Accepts `initial` with [`Self::from_initial_envelope`], then each of `rotations` in
    /// order with [`Self::rotate`]; returns the last root.
    pub fn from_chain<'a>(
        initial: &[u8],
        rotations: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self> {
        let mut root = Self::from_initial_envelope(initial)?;
        for next in rotations {
            root = root.rotate(next)?;
        }
        Ok(root)
    }

    fn from_document(document: TrustRootDocument) -> Result<Self> {
        document.validate()?;
        let keys: Vec<PublicKey> = document.keys.iter().map(|k| k.public_key).collect();
        let threshold =
            usize::try_from(document.threshold).map_err(|_| Error::InvalidThreshold {
                generation: document.generation,
                threshold: document.threshold,
                keys: keys.len(),
            })?;
        Ok(Self {
            document,
            keys,
            threshold,
        })
    }

    /// The generation (1 for the first root).
    pub fn generation(&self) -> u64 {
        self.document.generation
    }

    /// How many distinct keys must sign.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// The keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// The key ids, in document order.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(PublicKey::key_id).collect()
    }

    /// Expiry, if the root has one.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.document.expires_at
    }

    /// The signed document.
    pub fn document(&self) -> &TrustRootDocument {
        &self.document
    }

    /// Refuses if the root has expired at `now`.
    pub(crate) fn check_not_expired(&self, now: DateTime<Utc>) -> Result<()> {
        match self.document.expires_at {
            Some(expires_at) if now >= expires_at => Err(Error::TrustRootExpired {
                generation: self.generation(),
                expires_at,
                now,
            }),
            _ => Ok(()),
        }
    }

    /// Verifies an envelope of `payload_type` against this root's keys and threshold and
    /// returns its payload and distinct signers. No payload parsing happens here.
    pub(crate) fn verify_envelope(
        &self,
        bytes: &[u8],
        limit: usize,
        payload_type: &'static str,
        document: Document,
    ) -> Result<(Vec<u8>, Vec<KeyId>)> {
        let envelope = Envelope::from_json(bytes, limit, document)?;
        envelope.expect_type(payload_type, document)?;
        let signers = signers_of(self.generation());
        let verified = envelope.verify_signatures(&self.keys, &signers, false, document)?;
        let distinct =
            require_threshold(&verified, &self.keys, self.threshold, &signers, document)?;
        Ok((envelope.payload, distinct))
    }
}
