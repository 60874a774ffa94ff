//! Ed25519 public keys, key ids, 32-byte digests and the PEM text encoding of key files.
//!
//! Key file encoding (decided here, used by `basalt key generate`):
//! - `NAME.pub`: PEM `PUBLIC KEY`, i.e. the DER SubjectPublicKeyInfo of RFC 8410
//!   (`302a300506032b6570032100` followed by the 32 raw key bytes), base64 in 64-column lines.
//!   OpenSSL reads it (`openssl pkey -pubin -in NAME.pub`).
//! - `NAME.key`: PEM `PRIVATE KEY` holding the PKCS#8 v2 document ring generates (RFC 5958
//!   OneAsymmetricKey: seed plus `[1]` public key), base64 in 64-column lines. Measured:
//!   OpenSSL 3.0 refuses to load this v2 form ("unsupported"), so it is not an OpenSSL key
//!   file; the other way round works: the 48-byte PKCS#8 v1 form that
//!   `openssl genpkey -algorithm ed25519` writes is accepted by [`crate::SigningKey`].

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410 section 4); the key follows.
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Length of an Ed25519 public key, in bytes.
pub const ED25519_PUBLIC_KEY_LEN: usize = 32;

/// Parses exactly 64 lowercase hex digits. Lowercase only, so every value has one spelling.
fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// An Ed25519 public key (32 raw bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; ED25519_PUBLIC_KEY_LEN]);

impl PublicKey {
    /// Wraps 32 raw key bytes. Whether they encode a valid curve point is checked when a
    /// signature is verified (an invalid point never verifies anything).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let raw: [u8; 32] = bytes.try_into().map_err(|_| Error::InvalidPublicKey {
            reason: format!("{} bytes, expected {ED25519_PUBLIC_KEY_LEN}", bytes.len()),
        })?;
        Ok(Self(raw))
    }

    /// Parses the 64-digit lowercase hex form used in trust roots.
    pub fn from_hex(text: &str) -> Result<Self> {
        parse_hex32(text)
            .map(Self)
            .ok_or_else(|| Error::InvalidPublicKey {
                reason: format!("{text:?} is not 64 lowercase hex digits"),
            })
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; ED25519_PUBLIC_KEY_LEN] {
        &self.0
    }

    /// Lowercase hex of the raw key.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The key id: lowercase hex SHA-256 of the raw 32-byte key.
    pub fn key_id(&self) -> KeyId {
        KeyId(hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            &self.0,
        )))
    }

    /// Parses a `NAME.pub` file (PEM `PUBLIC KEY`, Ed25519 SubjectPublicKeyInfo).
    pub fn from_pem(text: &str) -> Result<Self> {
        let der = pem_decode("PUBLIC KEY", text)?;
        match der.strip_prefix(&SPKI_ED25519_PREFIX[..]) {
            Some(raw) if raw.len() == ED25519_PUBLIC_KEY_LEN => Self::from_bytes(raw),
            _ => Err(Error::InvalidKeyFile {
                reason: "PUBLIC KEY is not an Ed25519 SubjectPublicKeyInfo".into(),
            }),
        }
    }

    /// The `NAME.pub` text (PEM `PUBLIC KEY`).
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_ED25519_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        pem_encode("PUBLIC KEY", &der)
    }

    /// Whether `sig` is a valid Ed25519 signature of `message` by this key. ring rejects
    /// non-canonical `S` and re-encodes `R`, so a valid signature has exactly one encoding.
    pub(crate) fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.0)
            .verify(message, sig)
            .is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// A key id: lowercase hex SHA-256 of a raw Ed25519 public key. Signatures name their key by
/// it; it is derived, never trusted on its own (the signature must verify with that key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub String);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SHA-256 digest (artifact hashes, dm-verity root hashes), serialised as 64 lowercase hex
/// digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The SHA-256 of `bytes` (the one place the workspace computes a [`Digest`] of a
    /// buffer; streams use `ring::digest::Context` and wrap its result).
    pub fn of(bytes: &[u8]) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
        Self(out)
    }

    /// Parses 64 lowercase hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        parse_hex32(text).map(Self)
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::from_hex(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("{text:?} is not 64 lowercase hex digits"))
        })
    }
}

/// PEM-encodes `der` under `label` with 64-column base64 lines (RFC 7468 strict form).
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    // base64 output is ASCII, so splitting at any byte index is a char boundary.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Decodes a single PEM block labelled `label`; surrounding whitespace is ignored, nothing else
/// may precede or follow the block.
pub(crate) fn pem_decode(label: &str, text: &str) -> Result<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = text
        .trim()
        .strip_prefix(begin.as_str())
        .and_then(|rest| rest.strip_suffix(end.as_str()))
        .ok_or_else(|| Error::InvalidKeyFile {
            reason: format!("expected one PEM block {begin:?} … {end:?}"),
        })?;
    let b64: String = body.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| Error::InvalidKeyFile {
            reason: format!("{label}: bad base64: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_pem_round_trips() {
        let key = PublicKey::from_bytes(&[7u8; 32]).unwrap();
        let pem = key.to_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(PublicKey::from_pem(&pem).unwrap(), key);
    }

    #[test]
    fn public_key_pem_refuses_other_labels_and_algorithms() {
        let key = PublicKey::from_bytes(&[7u8; 32]).unwrap();
        let pem = key.to_pem().replace("PUBLIC KEY", "PRIVATE KEY");
        assert!(matches!(
            PublicKey::from_pem(&pem),
            Err(Error::InvalidKeyFile { .. })
        ));
        // An X25519 SPKI (OID 1.3.101.110) has the same shape with another OID byte.
        let mut der = SPKI_ED25519_PREFIX.to_vec();
        der[8] = 0x6e;
        der.extend_from_slice(&[7u8; 32]);
        let pem = pem_encode("PUBLIC KEY", &der);
        assert!(matches!(
            PublicKey::from_pem(&pem),
            Err(Error::InvalidKeyFile { .. })
        ));
    }

    #[test]
    fn hex_forms_are_lowercase_and_exact() {
        let hex = "ab".repeat(32);
        assert!(PublicKey::from_hex(&hex).is_ok());
        assert!(PublicKey::from_hex(&hex.to_uppercase()).is_err());
        assert!(PublicKey::from_hex(&hex[..62]).is_err());
        assert!(Digest::from_hex(&format!("{}g", &hex[..63])).is_none());
    }
}
