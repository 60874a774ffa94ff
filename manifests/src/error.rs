//! The one error type of `basalt-manifest`.
//!
//! Every refusal has its own variant, so callers (the updater, the initramfs, the `basalt` CLI)
//! can match on the reason, and every message names the values involved (versions, sequences,
//! times, key ids, have/need counts).

use chrono::{DateTime, Utc};
use semver::Version;

/// Which kind of signed document an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Document {
    /// A release manifest envelope (`application/vnd.basalt.release.v1+json`).
    Release,
    /// A trust root envelope (`application/vnd.basalt.trust.v1+json`).
    TrustRoot,
    /// A `/usr` root-hash statement envelope (`application/vnd.basalt.usrhash.v1+json`).
    UsrHash,
    /// The frame index of a compressed artifact (`BSLTFRM1`, see [`crate::frames`]).
    FrameIndex,
    /// A system extension statement envelope (`application/vnd.basalt.sysext.v1+json`).
    Sysext,
    /// The block index of an adaptive install (`BSLTBIX1`, see [`crate::adaptive`]).
    BlockIndex,
}

impl std::fmt::Display for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Document::Release => "release manifest",
            Document::TrustRoot => "trust root",
            Document::UsrHash => "usr hash statement",
            Document::FrameIndex => "frame index",
            Document::Sysext => "system extension statement",
            Document::BlockIndex => "block index",
        })
    }
}

/// Everything that can go wrong while parsing, verifying or (with `sign`) signing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is larger than the cap for its document kind; it was not parsed.
    #[error("{document} is {size} bytes, over the {limit}-byte limit; refusing to parse it")]
    TooLarge {
        document: Document,
        size: usize,
        limit: usize,
    },
    /// The envelope or its payload is not valid JSON for its schema.
    #[error("{document}: malformed JSON: {source}")]
    MalformedJson {
        document: Document,
        #[source]
        source: serde_json::Error,
    },
    /// A base64 field of the envelope does not decode (standard alphabet, padded, canonical).
    #[error("{document}: malformed base64 in `{field}`: {source}")]
    MalformedBase64 {
        document: Document,
        field: &'static str,
        #[source]
        source: base64::DecodeError,
    },
    /// The envelope carries another kind of document.
    #[error("{document}: payload type is {found:?}, expected {expected:?}")]
    WrongPayloadType {
        document: Document,
        expected: &'static str,
        found: String,
    },
    /// More signatures than [`crate::MAX_SIGNATURES`].
    #[error("{document}: {count} signatures, over the limit of {limit}")]
    TooManySignatures {
        document: Document,
        count: usize,
        limit: usize,
    },
    /// A signature names a key that is not in the key set being checked.
    #[error("{document}: signature by key {keyid}, which is not one of the {signers}")]
    UnknownKey {
        document: Document,
        keyid: String,
        signers: String,
    },
    /// A signature by a known key does not verify over PAE(payloadType, payload).
    #[error("{document}: the signature by key {keyid} does not verify")]
    BadSignature { document: Document, keyid: String },
    /// Fewer distinct valid signers than the threshold.
    #[error("{document}: signed by {have} of the {signers}, {need} needed")]
    BelowThreshold {
        document: Document,
        signers: String,
        have: usize,
        need: usize,
    },
    /// The threshold is missed because one key signed more than once; it counts once.
    #[error(
        "{document}: key {keyid} signed more than once and counts once: \
         {have} distinct of the {signers}, {need} needed"
    )]
    DuplicateSignature {
        document: Document,
        keyid: String,
        signers: String,
        have: usize,
        need: usize,
    },
    /// A trust root lists the same public key twice.
    #[error("trust root generation {generation} lists key {keyid} more than once")]
    DuplicateTrustKey { generation: u64, keyid: String },
    /// A trust root's threshold is 0 or larger than its key count.
    #[error(
        "trust root generation {generation}: threshold {threshold} is invalid for {keys} keys \
         (need 1 <= threshold <= keys)"
    )]
    InvalidThreshold {
        generation: u64,
        threshold: u64,
        keys: usize,
    },
    /// A public key is not a 32-byte Ed25519 key in the expected encoding.
    #[error("invalid public key: {reason}")]
    InvalidPublicKey { reason: String },
    /// A key file is not in the documented PEM encoding.
    #[error("invalid key file: {reason}")]
    InvalidKeyFile { reason: String },
    /// `schema_version` is not one this build understands.
    #[error("{document}: schema_version {found} is not supported (this build reads {supported})")]
    UnsupportedSchemaVersion {
        document: Document,
        found: u64,
        supported: u64,
    },
    /// The document parsed but breaks a rule of its schema (named in `reason`).
    #[error("{document}: invalid content: {reason}")]
    InvalidContent { document: Document, reason: String },
    /// The release expired (`now >= expires_at`).
    #[error("release {version} (sequence {sequence}) expired at {expires_at}; now is {now}")]
    Expired {
        version: Version,
        sequence: u64,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    /// The release was issued later than `now` plus the allowed clock skew.
    #[error(
        "release {version} was issued at {issued_at}, later than now ({now}) plus the allowed \
         clock skew of {max_skew_secs} s"
    )]
    IssuedInFuture {
        version: Version,
        issued_at: DateTime<Utc>,
        now: DateTime<Utc>,
        max_skew_secs: u64,
    },
    /// The sequence is not above the highest one already seen: a replay or a freeze attack.
    #[error(
        "release {version} has sequence {sequence}, not above the highest already seen \
         ({highest_seen}): replayed or frozen metadata"
    )]
    SequenceNotNewer {
        version: Version,
        sequence: u64,
        highest_seen: u64,
    },
    /// The release is older than the installed version and no override was given.
    #[error("release {offered} is older than the installed {installed}: downgrade refused")]
    Downgrade {
        installed: Version,
        offered: Version,
    },
    /// The release is for another OS.
    #[error("release is for OS {found:?}, this node runs {expected:?}")]
    WrongOs { expected: String, found: String },
    /// The release is for another architecture.
    #[error("release is for architecture {found:?}, this node is {expected:?}")]
    WrongArch { expected: String, found: String },
    /// The release is on another channel.
    #[error("release is on channel {found:?}, this node follows {expected:?}")]
    WrongChannel { expected: String, found: String },
    /// The trust root itself has expired.
    #[error("trust root generation {generation} expired at {expires_at}; now is {now}")]
    TrustRootExpired {
        generation: u64,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    /// A rotation does not go to exactly the next generation.
    #[error(
        "trust root rotation from generation {current} offers generation {offered}; only {} is accepted",
        current.saturating_add(1)
    )]
    TrustGenerationNotNext { current: u64, offered: u64 },
    /// A usr-hash statement binds another root hash than the one about to be mounted.
    #[error(
        "usr hash statement for {os} {version} binds root hash {found}, \
         but the root hash to mount is {expected}"
    )]
    UsrHashMismatch {
        os: String,
        version: Version,
        expected: String,
        found: String,
    },
    /// Serialising a document to JSON failed.
    #[error("{document}: encoding JSON failed: {source}")]
    EncodeJson {
        document: Document,
        #[source]
        source: serde_json::Error,
    },
    /// ring refused a private key (wrong PKCS#8 document, public key mismatch, …).
    #[error("private key rejected: {reason}")]
    KeyRejected { reason: String },
    /// The system random number generator failed while generating a key.
    #[error("generating an Ed25519 key failed (system random number generator)")]
    KeyGeneration,
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
