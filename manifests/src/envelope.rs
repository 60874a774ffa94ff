//! DSSE envelopes (in-toto "Dead Simple Signing Envelope", protocol v1) and threshold counting.
//!
//! Signatures cover `PAE(payloadType, payload)`, so the payload bytes are signed exactly as
//! shipped and no JSON canonicalisation is needed. Deliberate, stricter-than-DSSE choices, so
//! that an envelope has exactly one accepted byte form (any single-byte change is refused):
//! - base64 is the standard alphabet with canonical padding only (DSSE also allows URL-safe);
//! - every signature carries a `keyid` (DSSE makes it optional), equal to the lowercase hex
//!   SHA-256 of the raw public key; it only selects the key, the signature must verify with it;
//! - a signature by a key outside the set being checked is an error, not ignored, and so is a
//!   signature by a known key that does not verify;
//! - unknown JSON fields are refused.
//!
//! Duplicate signatures by one key are tolerated but count once toward a threshold.

use std::collections::BTreeSet;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::{Document, Error, Result};
use crate::keys::{KeyId, PublicKey};

/// At most this many signatures per envelope: bounds the verification work an input can cause
/// (an Ed25519 verification is ~50 µs).
pub const MAX_SIGNATURES: usize = 64;

/// The DSSE pre-authentication encoding:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in ASCII decimal.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// One signature of an envelope, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The signer's key id (hex SHA-256 of the raw public key).
    pub keyid: String,
    /// The raw signature bytes (64 for Ed25519).
    pub sig: Vec<u8>,
}

/// A DSSE envelope with its base64 fields decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `payloadType`: says which document the payload is.
    pub payload_type: String,
    /// The signed payload bytes.
    pub payload: Vec<u8>,
    /// The signatures, in envelope order.
    pub signatures: Vec<Signature>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEnvelope {
    #[serde(rename = "payloadType")]
    payload_type: String,
    payload: String,
    signatures: Vec<WireSignature>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSignature {
    keyid: String,
    sig: String,
}

fn b64() -> &'static base64::engine::GeneralPurpose {
    // STANDARD: `+/` alphabet, padding required, non-zero trailing bits refused.
    &base64::engine::general_purpose::STANDARD
}

impl Envelope {
    /// Parses envelope JSON of at most `limit` bytes (checked before parsing).
    /// `document` names the expected kind in errors; the payload type is not checked here.
    pub fn from_json(bytes: &[u8], limit: usize, document: Document) -> Result<Self> {
        if bytes.len() > limit {
            return Err(Error::TooLarge {
                document,
                size: bytes.len(),
                limit,
            });
        }
        let wire: WireEnvelope = serde_json::from_slice(bytes)
            .map_err(|source| Error::MalformedJson { document, source })?;
        if wire.signatures.len() > MAX_SIGNATURES {
            return Err(Error::TooManySignatures {
                document,
                count: wire.signatures.len(),
                limit: MAX_SIGNATURES,
            });
        }
        let payload =
            b64()
                .decode(wire.payload.as_bytes())
                .map_err(|source| Error::MalformedBase64 {
                    document,
                    field: "payload",
                    source,
                })?;
        let signatures =
            wire.signatures
                .into_iter()
                .map(|s| {
                    let sig = b64().decode(s.sig.as_bytes()).map_err(|source| {
                        Error::MalformedBase64 {
                            document,
                            field: "sig",
                            source,
                        }
                    })?;
                    Ok(Signature {
                        keyid: s.keyid,
                        sig,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            payload_type: wire.payload_type,
            payload,
            signatures,
        })
    }

    /// Serialises to compact envelope JSON.
    pub fn to_json(&self, document: Document) -> Result<Vec<u8>> {
        let wire = WireEnvelope {
            payload_type: self.payload_type.clone(),
            payload: b64().encode(&self.payload),
            signatures: self
                .signatures
                .iter()
                .map(|s| WireSignature {
                    keyid: s.keyid.clone(),
                    sig: b64().encode(&s.sig),
                })
                .collect(),
        };
        serde_json::to_vec(&wire).map_err(|source| Error::EncodeJson { document, source })
    }

    /// Refuses the envelope unless its payload type is `expected`.
    pub(crate) fn expect_type(&self, expected: &'static str, document: Document) -> Result<()> {
        if self.payload_type == expected {
            Ok(())
        } else {
            Err(Error::WrongPayloadType {
                document,
                expected,
                found: self.payload_type.clone(),
            })
        }
    }

    /// Verifies every signature against `known` keys and returns, per signature, the key id
    /// it was verified with. A signature by a key outside `known` is an error
    /// ([`Error::UnknownKey`]) unless `skip_unknown`, in which case it is left out (used when
    /// a rotation is first checked against the old root alone).
    pub(crate) fn verify_signatures(
        &self,
        known: &[PublicKey],
        signers: &str,
        skip_unknown: bool,
        document: Document,
    ) -> Result<Vec<KeyId>> {
        let message = pae(&self.payload_type, &self.payload);
        let known: Vec<(KeyId, &PublicKey)> = known.iter().map(|k| (k.key_id(), k)).collect();
        let mut verified = Vec::with_capacity(self.signatures.len());
        for signature in &self.signatures {
            let Some((keyid, key)) = known.iter().find(|(id, _)| id.0 == signature.keyid) else {
                if skip_unknown {
                    continue;
                }
                return Err(Error::UnknownKey {
                    document,
                    keyid: signature.keyid.clone(),
                    signers: signers.to_owned(),
                });
            };
            if !key.verify(&message, &signature.sig) {
                return Err(Error::BadSignature {
                    document,
                    keyid: keyid.0.clone(),
                });
            }
            verified.push(keyid.clone());
        }
        Ok(verified)
    }
}

/// Counts the distinct keys of `set` among `verified` (from [`Envelope::verify_signatures`])
/// and refuses below `threshold`. Returns the distinct signers, sorted.
pub(crate) fn require_threshold(
    verified: &[KeyId],
    set: &[PublicKey],
    threshold: usize,
    signers: &str,
    document: Document,
) -> Result<Vec<KeyId>> {
    let set_ids: BTreeSet<KeyId> = set.iter().map(PublicKey::key_id).collect();
    let mut distinct = BTreeSet::new();
    let mut duplicate = None;
    for id in verified.iter().filter(|id| set_ids.contains(*id)) {
        if !distinct.insert(id.clone()) && duplicate.is_none() {
            duplicate = Some(id.clone());
        }
    }
    let have = distinct.len();
    if have >= threshold {
        return Ok(distinct.into_iter().collect());
    }
    Err(match duplicate {
        Some(keyid) => Error::DuplicateSignature {
            document,
            keyid: keyid.0,
            signers: signers.to_owned(),
            have,
            need: threshold,
        },
        None => Error::BelowThreshold {
            document,
            signers: signers.to_owned(),
            have,
            need: threshold,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_protocol_example() {
        // DSSE protocol.md, "Test Vectors".
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn pae_counts_bytes_not_chars_and_handles_empty_body() {
        // DSSE protocol: LEN is the byte length of UTF8(type); an empty body ends in "0 ".
        assert_eq!(pae("ä", b""), "DSSEv1 2 ä 0 ".as_bytes().to_vec());
    }

    #[test]
    fn unknown_fields_and_url_safe_base64_are_refused() {
        let extra = br#"{"payloadType":"t","payload":"","signatures":[],"x":1}"#;
        assert!(matches!(
            Envelope::from_json(extra, 1024, Document::Release),
            Err(Error::MalformedJson { .. })
        ));
        let url_safe = br#"{"payloadType":"t","payload":"-_-_Pj8=","signatures":[]}"#;
        assert!(matches!(
            Envelope::from_json(url_safe, 1024, Document::Release),
            Err(Error::MalformedBase64 {
                field: "payload",
                ..
            })
        ));
    }

    #[test]
    fn size_is_capped_before_parsing() {
        // Not even JSON: the cap must answer first.
        let big = vec![b'x'; 2049];
        assert!(matches!(
            Envelope::from_json(&big, 2048, Document::TrustRoot),
            Err(Error::TooLarge {
                size: 2049,
                limit: 2048,
                ..
            })
        ));
    }
}
