//! Signed release manifests for Basalt.
//!
//! Owns: the release manifest schema ([`Manifest`]), the DSSE signature envelope
//! ([`Envelope`]), trust roots with thresholds and rotation ([`TrustRoot`]), the verification
//! policy (expiry, sequence, downgrade: [`Policy`], [`verify_release`]), the signed
//! `/usr` root-hash statement the initramfs checks ([`verify_usr_hash`]), the system
//! extension statement ([`verify_sysext`]), the frame index of
//! compressed artifacts ([`frames`]), the block index of adaptive installs ([`adaptive`]) and
//! the static repository layout ([`repo`]).
//! Does not own: fetching manifests or artifacts (the updater), building artifacts or writing
//! key files (`basalt`).
//!
//! # Design decisions
//!
//! - **DSSE, not canonical JSON.** Signatures are Ed25519 (ring) over
//!   `PAE(payloadType, payload)`; the payload is signed as bytes. The payload type is checked
//!   against the expected document, so a trust root is never accepted as a release and vice
//!   versa. See [`envelope`] for where we are stricter than DSSE (standard base64 only,
//!   `keyid` required, unknown or failing signatures are errors), which makes an envelope
//!   non-malleable: any single-byte change is refused (a property test checks this).
//! - **Key ids** are the lowercase hex SHA-256 of the raw 32-byte public key.
//! - **Thresholds** count distinct keys; a key that signs twice counts once.
//! - **Trust roots** rotate as TUF `root.json`: threshold of the old keys AND of the new keys,
//!   generation exactly +1 ([`trust`]).
//! - **Policy** ([`policy`]): strict expiry, issue time with a clock-skew allowance, sequence
//!   strictly increasing, downgrade only with an explicit override (reported and logged),
//!   equal version with a higher sequence accepted as a re-signed release.
//! - **Size caps before parsing**: [`MAX_RELEASE_BYTES`] (1 MiB), [`MAX_TRUST_ROOT_BYTES`]
//!   (64 KiB), [`MAX_USR_HASH_BYTES`] and [`MAX_SYSEXT_BYTES`] (16 KiB), and at most [`MAX_SIGNATURES`] signatures.
//! - **Schema versions**: `schema_version: 1` in manifests and trust roots, read before the
//!   rest; unknown versions and unknown fields are refused.
//! - **Signing is behind the `sign` feature** ([`SigningKey`], [`sign_envelope`], …), so
//!   node binaries (updater, initramfs) link verification only. Key files: `NAME.key` is the
//!   PKCS#8 v2 document from ring as PEM `PRIVATE KEY` (OpenSSL v1 keys are also
//!   accepted), `NAME.pub` the Ed25519 SubjectPublicKeyInfo as PEM `PUBLIC KEY`, which
//!   OpenSSL reads ([`keys`]).

// Re-exported because their types appear in this crate's API (times, versions).
pub use chrono;
pub use semver;

pub mod adaptive;
pub mod envelope;
pub mod error;
pub mod frames;
pub mod keys;
pub mod manifest;
pub mod policy;
pub mod repo;
#[cfg(any(test, feature = "sign"))]
pub mod sign;
pub mod sysext;
pub mod trust;
pub mod usrhash;

#[cfg(test)]
mod tests;

pub use envelope::{pae, Envelope, Signature, MAX_SIGNATURES};
pub use error::{Document, Error, Result};
pub use frames::{Frame, FrameIndex};
pub use keys::{Digest, KeyId, PublicKey};
pub use manifest::{
    valid_label, valid_release_value, AdaptiveRef, Artifact, ArtifactKind, BlobRef, Compression,
    CompressionAlgorithm, FrameIndexRef, HashAlgorithm, Manifest, Verity, SCHEMA_VERSION,
};
pub use policy::{
    verify_release, Policy, VerifiedRelease, VersionChange, DEFAULT_MAX_CLOCK_SKEW,
    MAX_RELEASE_BYTES, RELEASE_PAYLOAD_TYPE,
};
#[cfg(any(test, feature = "sign"))]
pub use sign::{
    sign_envelope, sign_release, sign_sysext, sign_trust_root, sign_usr_hash, SigningKey,
};
pub use sysext::{
    valid_extension_name, verify_sysext, SysextStatement, VerifiedSysext, MAX_SYSEXT_BYTES,
    SYSEXT_PAYLOAD_TYPE,
};
pub use trust::{
    KeyAlgorithm, TrustKey, TrustRoot, TrustRootDocument, MAX_TRUST_ROOT_BYTES, TRUST_PAYLOAD_TYPE,
};
pub use usrhash::{
    verify_usr_hash, verify_usr_hash_detailed, UsrHashStatement, VerifiedUsrHash,
    MAX_USR_HASH_BYTES, USR_HASH_PAYLOAD_TYPE,
};
