//! Signed statements binding a `/usr` image's dm-verity parameters to an OS name and
//! version.
//!
//! The initramfs stores one with each slot and checks it before mounting `/usr`, so an edited
//! boot entry (`usrhash=` of some other image) cannot boot an unsigned `/usr`. This path needs
//! no `sign` feature, no clock (no expiry: the statement is a binding, not a freshness claim;
//! freshness is the updater's job with release manifests) and little code.
//!
//! Payload (`application/vnd.basalt.usrhash.v2+json`; the version lives in the payload type,
//! so there is no `schema_version` field): `{"os", "version", "verity": {…}}` with the same
//! [`Verity`] parameters a release manifest carries for its `usr` artifact — root hash, salt,
//! data blocks, hash offset, algorithm, block sizes — unknown fields refused. Binding the
//! whole set (v1 bound the root hash only) leaves nothing about the dm-verity device to the
//! unsigned superblock on the disk: basalt-init compares every field with what it maps. The
//! OS name is bound so that keys signing several products cannot boot one as another; the
//! version is what the initramfs's version floor is checked against. v1 statements are
//! refused (a v1 binding is exactly the weaker one this replaces).

use semver::Version;
use serde::{Deserialize, Serialize};

use crate::error::{Document, Error, Result};
use crate::keys::KeyId;
use crate::manifest::Verity;
use crate::trust::TrustRoot;

/// DSSE payload type of usr-hash statements.
pub const USR_HASH_PAYLOAD_TYPE: &str = "application/vnd.basalt.usrhash.v2+json";

/// Usr-hash envelopes larger than this (16 KiB) are refused before parsing.
pub const MAX_USR_HASH_BYTES: usize = 16 * 1024;

/// The signed payload: the `/usr` image with these dm-verity parameters is `os`
/// `version`'s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsrHashStatement {
    /// OS name.
    pub os: String,
    /// OS version.
    pub version: Version,
    /// The image's dm-verity parameters (root hash included), as the release manifest's
    /// `usr` artifact carries them; `hash_offset` is where the hash area starts in the
    /// shipped `usr.img`, i.e. the end of the data (Basalt's layout).
    pub verity: Verity,
}

impl UsrHashStatement {
    /// Parses and validates the JSON payload.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let statement: Self =
            serde_json::from_slice(bytes).map_err(|source| Error::MalformedJson {
                document: Document::UsrHash,
                source,
            })?;
        statement
            .verity
            .validate_params("usr")
            .map_err(|e| match e {
                Error::InvalidContent { reason, .. } => Error::InvalidContent {
                    document: Document::UsrHash,
                    reason,
                },
                other => other,
            })?;
        if !crate::manifest::valid_label(&statement.os) {
            return Err(Error::InvalidContent {
                document: Document::UsrHash,
                reason: format!(
                    "os {:?} must be 1-64 characters of [a-z0-9._-]",
                    statement.os
                ),
            });
        }
        Ok(statement)
    }

    /// The root hash (what `usrhash=` carries).
    pub fn root_hash(&self) -> &crate::keys::Digest {
        &self.verity.root_hash
    }

    /// Compact JSON, the form that gets signed.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|source| Error::EncodeJson {
            document: Document::UsrHash,
            source,
        })
    }
}

/// A statement that passed [`verify_usr_hash`], with the keys that signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedUsrHash {
    /// The statement.
    pub statement: UsrHashStatement,
    /// The distinct keys whose signatures counted, sorted.
    pub signed_by: Vec<KeyId>,
}

/// Verifies a usr-hash envelope against `root` and checks that it binds
/// `expected_root_hash` (hex, as on the kernel command line; compared case-insensitively).
pub fn verify_usr_hash(
    envelope: &[u8],
    root: &TrustRoot,
    expected_root_hash: &str,
) -> Result<UsrHashStatement> {
    verify_usr_hash_detailed(envelope, root, expected_root_hash).map(|v| v.statement)
}

/// [`verify_usr_hash`], also returning the signers.
pub fn verify_usr_hash_detailed(
    envelope: &[u8],
    root: &TrustRoot,
    expected_root_hash: &str,
) -> Result<VerifiedUsrHash> {
    let (payload, signed_by) = root.verify_envelope(
        envelope,
        MAX_USR_HASH_BYTES,
        USR_HASH_PAYLOAD_TYPE,
        Document::UsrHash,
    )?;
    let statement = UsrHashStatement::from_json(&payload)?;
    if statement.root_hash().to_hex() != expected_root_hash.to_ascii_lowercase() {
        let found = statement.root_hash().to_hex();
        return Err(Error::UsrHashMismatch {
            os: statement.os,
            version: statement.version,
            expected: expected_root_hash.to_owned(),
            found,
        });
    }
    Ok(VerifiedUsrHash {
        statement,
        signed_by,
    })
}
