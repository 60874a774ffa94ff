//! Signed statements binding a system extension image to its name, version, the OS releases
//! it extends and its dm-verity parameters.
//!
//! Payload (`application/vnd.basalt.sysext.v1+json`): `{"name", "version", "os",
//! "extension_release", "verity": {…}}`, unknown fields refused.
//!
//! Why a document of its own and not the usr-hash statement: a usr-hash statement says "this
//! image is `/usr` of OS `os` `version`" — the initramfs boots what it names. An extension
//! signed with that payload type could be booted as `/usr` by anyone who edits `usrhash=`
//! (the same keys sign both), and it could not say which extension it is or which OS
//! releases it fits. A distinct payload type keeps the two apart at the signature level
//! (DSSE signs the payload type), so neither can stand in for the other.
//!
//! `extension_release` is the exact text of the image's
//! `usr/lib/extension-release.d/extension-release.NAME`: compatibility with the booted OS is
//! decided from the signed copy *before* anything is mounted, and after mounting the file in
//! the (verity-checked) tree must be byte-identical — one fact, signed once.
//!
//! What this module checks: signatures and threshold, the payload type, the shape of the
//! payload (name, OS label, verity parameters, release text size). What it does not check:
//! the compatibility rules (`basalt-sysext`), the image bytes (`basalt-verity`).

use semver::Version;
use serde::{Deserialize, Serialize};

use crate::error::{Document, Error, Result};
use crate::keys::KeyId;
use crate::manifest::Verity;
use crate::trust::TrustRoot;

/// DSSE payload type of system extension statements.
pub const SYSEXT_PAYLOAD_TYPE: &str = "application/vnd.basalt.sysext.v1+json";

/// Sysext envelopes larger than this (16 KiB) are refused before parsing (the same cap as
/// usr-hash statements: both live in one 4 KiB-aligned block after the hash tree).
pub const MAX_SYSEXT_BYTES: usize = 16 * 1024;

/// Largest `extension_release` text accepted (4 KiB).
pub const MAX_EXTENSION_RELEASE_BYTES: usize = 4096;

/// The signed payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysextStatement {
    /// Extension name: the `NAME` of `extension-release.NAME`, of the image file
    /// (`NAME.raw`) and of the mount point (`/run/extensions/NAME`).
    pub name: String,
    /// Extension version.
    pub version: Version,
    /// The OS (`ID=` of os-release) the extension is for.
    pub os: String,
    /// The exact text of `usr/lib/extension-release.d/extension-release.NAME` in the image.
    pub extension_release: String,
    /// The image's dm-verity parameters (hash area right after the erofs data).
    pub verity: Verity,
}

/// `[a-z0-9][a-z0-9._-]{0,63}`, and not `.`/`..`-like: a safe file and directory name.
pub fn valid_extension_name(name: &str) -> bool {
    crate::manifest::valid_label(name) && !name.contains("..")
}

impl SysextStatement {
    /// Parses and validates the JSON payload.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let statement: Self =
            serde_json::from_slice(bytes).map_err(|source| Error::MalformedJson {
                document: Document::Sysext,
                source,
            })?;
        statement.validate()?;
        Ok(statement)
    }

    /// The shape checks [`Self::from_json`] applies (also run before signing).
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Error::InvalidContent {
            document: Document::Sysext,
            reason,
        };
        if !valid_extension_name(&self.name) {
            return Err(invalid(format!(
                "extension name {:?} must be 1-64 characters of [a-z0-9._-], starting with [a-z0-9]",
                self.name
            )));
        }
        if !crate::manifest::valid_label(&self.os) {
            return Err(invalid(format!(
                "os {:?} must be 1-64 characters of [a-z0-9._-]",
                self.os
            )));
        }
        if self.extension_release.is_empty()
            || self.extension_release.len() > MAX_EXTENSION_RELEASE_BYTES
        {
            return Err(invalid(format!(
                "extension_release of {} bytes (1..={MAX_EXTENSION_RELEASE_BYTES})",
                self.extension_release.len()
            )));
        }
        self.verity
            .validate_params(&self.name)
            .map_err(|e| match e {
                Error::InvalidContent { reason, .. } => invalid(reason),
                other => other,
            })
    }

    /// Compact JSON, the form that gets signed.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|source| Error::EncodeJson {
            document: Document::Sysext,
            source,
        })
    }
}

/// A statement that passed [`verify_sysext`], with the keys that signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSysext {
    /// The statement.
    pub statement: SysextStatement,
    /// The distinct keys whose signatures counted, sorted.
    pub signed_by: Vec<KeyId>,
}

/// Verifies a sysext envelope against `root` (signatures, threshold, payload type, shape).
/// No expiry: like the usr-hash statement, it is a binding, not a freshness claim (the
/// release manifest that lists the extension carries freshness).
pub fn verify_sysext(envelope: &[u8], root: &TrustRoot) -> Result<VerifiedSysext> {
    let (payload, signed_by) = root.verify_envelope(
        envelope,
        MAX_SYSEXT_BYTES,
        SYSEXT_PAYLOAD_TYPE,
        Document::Sysext,
    )?;
    let statement = SysextStatement::from_json(&payload)?;
    Ok(VerifiedSysext {
        statement,
        signed_by,
    })
}
