//! Signing and key generation. Compiled only with the `sign` feature (and in this crate's own
//! unit tests), so node-side binaries never link ring's signing code or a random generator.

use std::fmt;

use ring::signature::{Ed25519KeyPair, KeyPair as _};

use crate::envelope::{Envelope, Signature};
use crate::error::{Document, Error, Result};
use crate::keys::{pem_decode, pem_encode, KeyId, PublicKey};
use crate::manifest::Manifest;
use crate::policy::RELEASE_PAYLOAD_TYPE;
use crate::trust::{TrustRootDocument, TRUST_PAYLOAD_TYPE};
use crate::usrhash::{UsrHashStatement, USR_HASH_PAYLOAD_TYPE};

/// DER prefix of the 48-byte PKCS#8 v1 Ed25519 document (RFC 8410 section 7) that
/// `openssl genpkey -algorithm ed25519` writes; the 32-byte seed follows. It holds no public
/// key, so ring's "unchecked" loader has nothing to leave unchecked.
const PKCS8_V1_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// An Ed25519 signing key with its PKCS#8 document (for writing `NAME.key`).
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
    pkcs8: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    // Never prints secret material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.public.key_id())
            .finish_non_exhaustive()
    }
}

fn rejected(e: ring::error::KeyRejected) -> Error {
    Error::KeyRejected {
        reason: e.to_string(),
    }
}

impl SigningKey {
    /// A new random key (ring's PKCS#8 v2 document, from the system RNG).
    pub fn generate() -> Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| Error::KeyGeneration)?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// Loads a PKCS#8 document: v2 (with public key, checked by ring) as written by
    /// [`Self::generate`], or the 48-byte v1 form OpenSSL writes.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self> {
        let pair = if der.len() == 48 && der.starts_with(&PKCS8_V1_ED25519_PREFIX) {
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
        } else {
            Ed25519KeyPair::from_pkcs8(der)
        }
        .map_err(rejected)?;
        let public = PublicKey::from_bytes(pair.public_key().as_ref())?;
        Ok(Self {
            pair,
            public,
            pkcs8: der.to_vec(),
        })
    }

    /// A key from a 32-byte RFC 8032 seed (deterministic: tests, fuzzing, test vectors).
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self> {
        let mut der = PKCS8_V1_ED25519_PREFIX.to_vec();
        der.extend_from_slice(seed);
        Self::from_pkcs8(&der)
    }

    /// Loads a `NAME.key` file (PEM `PRIVATE KEY`).
    pub fn from_pem(text: &str) -> Result<Self> {
        Self::from_pkcs8(&pem_decode("PRIVATE KEY", text)?)
    }

    /// The `NAME.key` text: the PKCS#8 document as PEM `PRIVATE KEY`.
    pub fn to_pem(&self) -> String {
        pem_encode("PRIVATE KEY", &self.pkcs8)
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The key id.
    pub fn key_id(&self) -> KeyId {
        self.public.key_id()
    }

    /// Raw Ed25519 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

/// Signs `payload` as `payload_type` with each key and returns the envelope JSON.
pub fn sign_envelope(payload_type: &str, payload: &[u8], keys: &[&SigningKey]) -> Result<Vec<u8>> {
    let message = crate::envelope::pae(payload_type, payload);
    let envelope = Envelope {
        payload_type: payload_type.to_owned(),
        payload: payload.to_vec(),
        signatures: keys
            .iter()
            .map(|k| Signature {
                keyid: k.key_id().0,
                sig: k.sign(&message),
            })
            .collect(),
    };
    // The document kind only labels a (never expected) encoding error.
    envelope.to_json(Document::Release)
}

/// Validates and signs a release manifest.
pub fn sign_release(manifest: &Manifest, keys: &[&SigningKey]) -> Result<Vec<u8>> {
    manifest.validate()?;
    sign_envelope(RELEASE_PAYLOAD_TYPE, &manifest.to_json()?, keys)
}

/// Validates and signs a trust root document (for a rotation, sign with old and new keys).
pub fn sign_trust_root(document: &TrustRootDocument, keys: &[&SigningKey]) -> Result<Vec<u8>> {
    document.validate()?;
    sign_envelope(TRUST_PAYLOAD_TYPE, &document.to_json()?, keys)
}

/// Signs a usr-hash statement.
pub fn sign_usr_hash(statement: &UsrHashStatement, keys: &[&SigningKey]) -> Result<Vec<u8>> {
    sign_envelope(USR_HASH_PAYLOAD_TYPE, &statement.to_json()?, keys)
}

/// Validates and signs a system extension statement.
pub fn sign_sysext(
    statement: &crate::sysext::SysextStatement,
    keys: &[&SigningKey],
) -> Result<Vec<u8>> {
    statement.validate()?;
    sign_envelope(
        crate::sysext::SYSEXT_PAYLOAD_TYPE,
        &statement.to_json()?,
        keys,
    )
}
