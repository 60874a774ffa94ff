//! The release manifest schema (`schema_version: 1`).
//!
//! A manifest describes one release: OS, version (semver), channel, architecture, a monotonic
//! `sequence`, issue and expiry times (RFC 3339) and the artifacts. Parsing is two-step: the
//! `schema_version` is read first (an unknown version is refused by number, not by whatever
//! field it happens to add), then the v1 schema is parsed with unknown fields refused, then the
//! cross-field rules of [`Manifest::validate`] are applied.
//!
//! ```
//! let json = br#"{
//!   "schema_version": 1, "os": "basalt", "version": "1.2.0", "channel": "stable",
//!   "arch": "x86_64", "sequence": 10,
//!   "issued_at": "2026-06-01T11:00:00Z", "expires_at": "2026-06-08T12:00:00Z",
//!   "artifacts": [
//!     {"kind": "usr", "name": "usr.img", "size": 1052672,
//!      "sha256": "1111111111111111111111111111111111111111111111111111111111111111",
//!      "compression": {"algorithm": "zstd", "compressed_size": 4000,
//!        "compressed_sha256": "2222222222222222222222222222222222222222222222222222222222222222"},
//!      "verity": {"root_hash": "3333333333333333333333333333333333333333333333333333333333333333",
//!        "salt": "00ff", "data_blocks": 256, "hash_offset": 1048576, "hash_algorithm": "sha256",
//!        "data_block_size": 4096, "hash_block_size": 4096}},
//!     {"kind": "kernel", "name": "vmlinuz", "size": 5000,
//!      "sha256": "4444444444444444444444444444444444444444444444444444444444444444"}
//!   ]
//! }"#;
//! let manifest = basalt_manifest::Manifest::from_json(json).unwrap();
//! assert_eq!(manifest.artifacts_of(basalt_manifest::ArtifactKind::Usr).count(), 1);
//! ```

use chrono::{DateTime, Utc};
use semver::Version;
use serde::{Deserialize, Serialize};

use crate::error::{Document, Error, Result};
use crate::keys::Digest;

/// The only manifest schema version this build reads and writes.
pub const SCHEMA_VERSION: u64 = 1;

/// One release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u64,
    /// OS name, matched against the node's (e.g. `basalt`).
    pub os: String,
    /// The release version (semver; precedence ignores build metadata).
    pub version: Version,
    /// Release channel (e.g. `stable`, `beta`).
    pub channel: String,
    /// Architecture (e.g. `x86_64`).
    pub arch: String,
    /// Monotonic counter over everything published for this os/arch/channel: a node refuses
    /// a sequence not above the highest it has seen (anti-replay, anti-freeze).
    pub sequence: u64,
    /// When the release was signed.
    #[serde(with = "rfc3339")]
    pub issued_at: DateTime<Utc>,
    /// After this instant the manifest is refused.
    #[serde(with = "rfc3339")]
    pub expires_at: DateTime<Utc>,
    /// The files of the release.
    pub artifacts: Vec<Artifact>,
    /// The OS's `SYSEXT_LEVEL=` (its os-release says the same): the extension ABI level of
    /// this release. A node checks the release's `sysext` artifacts — and, on a
    /// node-image-only update, the extensions it keeps — against it *before* the slot flip,
    /// without reading the new `/usr` (`basalt-sysext`). Absent: extensions must match by
    /// `VERSION_ID=` (= [`Manifest::version`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sysext_level: Option<String>,
}

/// A `SYSEXT_LEVEL=`/`VERSION_ID=`-style os-release value: 1-64 characters of
/// `[A-Za-z0-9._+~-]` (what `basalt sysext build` accepts in `extension-release`).
pub fn valid_release_value(value: &str) -> bool {
    (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+~".contains(&b))
}

/// What an artifact is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// The `/usr` image written to the inactive slot; must carry [`Verity`] parameters.
    Usr,
    /// A kernel image.
    Kernel,
    /// An initramfs.
    Initrd,
    /// A system extension image (`NAME.raw`, see `basalt-sysext`); must carry [`Verity`]
    /// parameters (the ones its signed sysext statement binds).
    Sysext,
    /// The release's software bill of materials (an SPDX 2.3 JSON document listing every
    /// package and binary in the image). Listed so the release signatures cover it; a node
    /// does not need it to install the release.
    Sbom,
    /// The release's signed unified kernel image (`NAME.efi`: systemd-stub + kernel +
    /// initramfs + command line + os-release in one PE signed for Secure Boot). At most one
    /// per release, never with verity parameters. Its SHA-256 here binds every byte of it,
    /// the embedded command line included; a node also checks that this command line names
    /// the release's own `usrhash=` (the `usr` artifact's verity root hash) before staging
    /// it, since a signature over the wrong UKI is still a valid signature.
    Uki,
}

/// One file of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// What the file is.
    pub kind: ArtifactKind,
    /// File name: `[A-Za-z0-9._+-]`, 1–255 bytes, not starting with `.`, unique in the
    /// release (safe to use as a file name).
    pub name: String,
    /// Size in bytes of the uncompressed artifact.
    pub size: u64,
    /// SHA-256 of the uncompressed artifact.
    pub sha256: Digest,
    /// How the artifact is shipped compressed, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// dm-verity parameters, for `usr` and `sysext` images (required for both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity: Option<Verity>,
}

/// A compressed transport form of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    /// The compression format.
    pub algorithm: CompressionAlgorithm,
    /// Size in bytes of the compressed file.
    pub compressed_size: u64,
    /// SHA-256 of the compressed file (checked before decompressing).
    pub compressed_sha256: Digest,
    /// The frame index of a file compressed as independent frames (resumable, checkable frame
    /// by frame): see [`crate::frames`]. `basalt release publish` always writes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_index: Option<FrameIndexRef>,
    /// The block index and frame store of an adaptive (block-reuse) install of a `usr`
    /// image: see [`crate::adaptive`]. Optional: without it a node installs from the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveRef>,
}

/// The two blobs of an adaptive install, each served under its SHA-256 (see [`crate::repo`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveRef {
    /// The block index (`BSLTBIX1`, [`crate::adaptive::BlockIndex`]).
    pub block_index: BlobRef,
    /// The frame store: the concatenated zstd frames the index's table describes.
    pub frame_store: BlobRef,
}

/// A blob named by its SHA-256 and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRef {
    /// SHA-256 of the blob.
    pub sha256: Digest,
    /// Size of the blob in bytes.
    pub size: u64,
}

/// Where a [`crate::FrameIndex`] blob is and how to check it: served, like every blob, under
/// its SHA-256 (see [`crate::repo`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameIndexRef {
    /// SHA-256 of the index blob.
    pub sha256: Digest,
    /// Size of the index blob in bytes (`16 + 72 × frames`).
    pub size: u64,
}

/// Supported compression formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionAlgorithm {
    /// Zstandard.
    Zstd,
    /// xz / LZMA2.
    Xz,
    /// gzip.
    Gzip,
    /// LZ4 frame format.
    Lz4,
}

/// dm-verity parameters of an image whose hash tree is stored in the same file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verity {
    /// The root hash (what `usrhash=` carries).
    pub root_hash: Digest,
    /// The salt, lowercase hex (may be empty), at most 256 bytes as veritysetup allows.
    pub salt: String,
    /// Number of data blocks covered by the tree.
    pub data_blocks: u64,
    /// Byte offset in the artifact where the hash area (veritysetup superblock) starts, as
    /// `veritysetup --hash-offset`; at or after the end of the data blocks.
    pub hash_offset: u64,
    /// Hash algorithm of the tree.
    pub hash_algorithm: HashAlgorithm,
    /// Data block size in bytes (power of two, 512–65536).
    pub data_block_size: u32,
    /// Hash block size in bytes (power of two, 512–65536).
    pub hash_block_size: u32,
}

/// dm-verity hash algorithms Basalt uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    /// SHA-256.
    Sha256,
}

/// Reads only `schema_version`, ignoring everything else.
#[derive(Deserialize)]
struct SchemaProbe {
    schema_version: u64,
}

/// Refuses JSON whose `schema_version` is missing or not [`SCHEMA_VERSION`].
pub(crate) fn check_schema_version(bytes: &[u8], document: Document) -> Result<()> {
    let probe: SchemaProbe = serde_json::from_slice(bytes)
        .map_err(|source| Error::MalformedJson { document, source })?;
    if probe.schema_version != SCHEMA_VERSION {
        return Err(Error::UnsupportedSchemaVersion {
            document,
            found: probe.schema_version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidContent {
        document: Document::Release,
        reason: reason.into(),
    }
}

/// Names of OS, channel and arch: non-empty, `[a-z0-9._-]`, at most 64 bytes, starting with
/// `[a-z0-9]` (so never `.` or `..`: channel and arch become folder names in a repository).
pub fn valid_label(text: &str) -> bool {
    text.len() <= 64
        && text.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && text
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
}

fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
}

fn valid_block_size(size: u32) -> bool {
    size.is_power_of_two() && (512..=65536).contains(&size)
}

impl Manifest {
    /// Parses and validates manifest JSON (the payload of a release envelope). Does not check
    /// signatures or policy; use [`crate::verify_release`] for untrusted input.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        check_schema_version(bytes, Document::Release)?;
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|source| Error::MalformedJson {
                document: Document::Release,
                source,
            })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Compact JSON, the form that gets signed.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|source| Error::EncodeJson {
            document: Document::Release,
            source,
        })
    }

    /// The rules the serde schema cannot express. Refuses with [`Error::InvalidContent`].
    pub fn validate(&self) -> Result<()> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(Error::UnsupportedSchemaVersion {
                document: Document::Release,
                found: self.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        for (field, value) in [
            ("os", &self.os),
            ("channel", &self.channel),
            ("arch", &self.arch),
        ] {
            if !valid_label(value) {
                return Err(invalid(format!(
                    "{field} {value:?} must be 1-64 characters of [a-z0-9._-], starting with [a-z0-9]"
                )));
            }
        }
        if self.expires_at <= self.issued_at {
            return Err(invalid(format!(
                "expires_at {} is not after issued_at {}",
                self.expires_at, self.issued_at
            )));
        }
        if let Some(level) = &self.sysext_level {
            if !valid_release_value(level) {
                return Err(invalid(format!(
                    "sysext_level {level:?} must be 1-64 characters of [A-Za-z0-9._+~-]"
                )));
            }
        }
        if self.artifacts.is_empty() {
            return Err(invalid("a release lists at least one artifact"));
        }
        if self.artifacts_of(ArtifactKind::Uki).nth(1).is_some() {
            return Err(invalid(
                "a release carries at most one uki artifact (the boot entry of its slot)",
            ));
        }
        if self.artifacts_of(ArtifactKind::Uki).next().is_some()
            && self.artifacts_of(ArtifactKind::Usr).next().is_none()
        {
            return Err(invalid(
                "a uki artifact boots the release's usr image: the release has none",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for artifact in &self.artifacts {
            artifact.validate()?;
            if !names.insert(artifact.name.as_str()) {
                return Err(invalid(format!(
                    "artifact name {:?} appears twice",
                    artifact.name
                )));
            }
        }
        Ok(())
    }

    /// The artifacts of one kind, in manifest order.
    pub fn artifacts_of(&self, kind: ArtifactKind) -> impl Iterator<Item = &Artifact> {
        self.artifacts.iter().filter(move |a| a.kind == kind)
    }
}

impl Artifact {
    fn validate(&self) -> Result<()> {
        let name = &self.name;
        if !valid_file_name(name) {
            return Err(invalid(format!(
                "artifact name {name:?} must be 1-255 characters of [A-Za-z0-9._+-], not starting with '.'"
            )));
        }
        if self.size == 0 {
            return Err(invalid(format!("artifact {name:?} has size 0")));
        }
        if let Some(c) = &self.compression {
            if c.compressed_size == 0 {
                return Err(invalid(format!("artifact {name:?} has compressed_size 0")));
            }
            if let Some(index) = &c.frame_index {
                let records = index
                    .size
                    .checked_sub(crate::frames::HEADER_LEN as u64)
                    .filter(|n| n % crate::frames::RECORD_LEN as u64 == 0)
                    .map(|n| n / crate::frames::RECORD_LEN as u64);
                let ok =
                    records.is_some_and(|n| (1..=crate::frames::MAX_FRAMES as u64).contains(&n));
                if !ok {
                    return Err(invalid(format!(
                        "artifact {name:?}: frame index size {} is not 16 + 72 x (1..={}) bytes",
                        index.size,
                        crate::frames::MAX_FRAMES
                    )));
                }
                if c.algorithm != CompressionAlgorithm::Zstd {
                    return Err(invalid(format!(
                        "artifact {name:?}: a frame index needs zstd frames, not {:?}",
                        c.algorithm
                    )));
                }
            }
            if let Some(a) = &c.adaptive {
                if self.kind != ArtifactKind::Usr {
                    return Err(invalid(format!(
                        "artifact {name:?} of kind {:?}: only a usr image has an adaptive index",
                        self.kind
                    )));
                }
                let min = crate::adaptive::index_len(1, 1, 0);
                let max = crate::adaptive::MAX_INDEX_LEN;
                if !(min..=max).contains(&a.block_index.size) || a.frame_store.size == 0 {
                    return Err(invalid(format!(
                        "artifact {name:?}: adaptive block index of {} bytes (must be \
                         {min}..={max}) or empty frame store",
                        a.block_index.size
                    )));
                }
                crate::adaptive::TreeBlocks::of(self)?;
            }
        }
        match (self.kind, &self.verity) {
            (ArtifactKind::Usr, None) => {
                return Err(invalid(format!(
                    "usr artifact {name:?} has no verity parameters"
                )))
            }
            (ArtifactKind::Sysext, None) => {
                return Err(invalid(format!(
                    "sysext artifact {name:?} has no verity parameters"
                )))
            }
            (ArtifactKind::Sysext, Some(_))
                if !name
                    .strip_suffix(".raw")
                    .is_some_and(crate::sysext::valid_extension_name) =>
            {
                return Err(invalid(format!(
                    "sysext artifact {name:?} must be named NAME.raw with NAME of [a-z0-9._-] \
                     (the extension's name)"
                )))
            }
            (ArtifactKind::Uki, _) if name.strip_suffix(".efi").is_none_or(str::is_empty) => {
                return Err(invalid(format!(
                    "uki artifact {name:?} must be named NAME.efi (an EFI program)"
                )))
            }
            (
                ArtifactKind::Kernel
                | ArtifactKind::Initrd
                | ArtifactKind::Sbom
                | ArtifactKind::Uki,
                Some(_),
            ) => {
                return Err(invalid(format!(
                    "artifact {name:?} of kind {:?} cannot carry verity parameters",
                    self.kind
                )))
            }
            (_, Some(v)) => v.validate(name, self.size)?,
            (_, None) => {}
        }
        Ok(())
    }
}

impl Verity {
    fn validate(&self, name: &str, size: u64) -> Result<()> {
        self.validate_params(name)?;
        if self.hash_offset >= size {
            return Err(invalid(format!(
                "artifact {name:?}: verity hash_offset {} must lie before the artifact's end ({size})",
                self.hash_offset
            )));
        }
        Ok(())
    }

    /// The checks that need no artifact size (a usr-hash statement carries the same
    /// parameters without one): block sizes, salt, data blocks, hash offset after the data.
    pub(crate) fn validate_params(&self, name: &str) -> Result<()> {
        if !valid_block_size(self.data_block_size) || !valid_block_size(self.hash_block_size) {
            return Err(invalid(format!(
                "artifact {name:?}: verity block sizes {}/{} must be powers of two in 512..=65536",
                self.data_block_size, self.hash_block_size
            )));
        }
        let salt_ok = self.salt.len() % 2 == 0
            && self.salt.len() <= 512
            && self
                .salt
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !salt_ok {
            return Err(invalid(format!(
                "artifact {name:?}: verity salt must be lowercase hex of at most 256 bytes"
            )));
        }
        if self.data_blocks == 0 {
            return Err(invalid(format!(
                "artifact {name:?}: verity data_blocks is 0"
            )));
        }
        let data_end = self
            .data_blocks
            .checked_mul(u64::from(self.data_block_size))
            .ok_or_else(|| invalid(format!("artifact {name:?}: verity data size overflows")))?;
        if self.hash_offset < data_end {
            return Err(invalid(format!(
                "artifact {name:?}: verity hash_offset {} must not lie before the end of the \
                 data ({data_end})",
                self.hash_offset
            )));
        }
        Ok(())
    }
}

/// serde for `DateTime<Utc>` as strict RFC 3339 (chrono's default parser is more lenient).
pub(crate) mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not RFC 3339: {e}")))
    }

    /// The same for `Option<DateTime<Utc>>` (absent or a string).
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}
