//! What a release directory says it is: its signed manifest (checked against a trust root
//! when one is given) and its SBOM, checked against the manifest's `sbom` artifact (size and
//! SHA-256: the signatures cover the SBOM through it). `basalt release inspect` prints this.

use std::path::{Path, PathBuf};

use basalt_manifest::chrono::{DateTime, Utc};
use basalt_manifest::{
    verify_release, ArtifactKind, Document, Envelope, Manifest, Policy, TrustRoot,
    MAX_RELEASE_BYTES,
};
use serde::Serialize;

use super::image::RELEASE_SIGNED;
use super::sbom::{self, SbomSummary, SpdxDocument};

/// The largest SBOM read (a container-host SBOM is ≈200 KiB).
pub const MAX_SBOM_BYTES: u64 = 16 << 20;

/// Why a release directory could not be inspected, or was refused.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the signed manifest is refused")]
    Refused {
        path: PathBuf,
        #[source]
        source: Box<basalt_manifest::Error>,
    },
    #[error("{path}: the SBOM is {found_size} bytes with sha256 {found}, the signed manifest lists {expected_size} bytes with sha256 {expected}")]
    SbomMismatch {
        path: PathBuf,
        expected: String,
        expected_size: u64,
        found: String,
        found_size: u64,
    },
    #[error("{path} is larger than {MAX_SBOM_BYTES} bytes")]
    SbomTooLarge { path: PathBuf },
    #[error("{path} is not an SPDX 2.3 JSON document: {what}")]
    SbomParse { path: PathBuf, what: String },
}

/// A release directory, inspected.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub manifest: Manifest,
    /// Whether the signatures, expiry … were checked against a trust root.
    pub verified: bool,
    /// The key ids whose signatures counted (when verified).
    pub signed_by: Vec<String>,
    /// The SBOM artifact, when the release lists one.
    pub sbom: Option<SbomSummary>,
}

impl Inspection {
    /// Whether this is a refusal (the CLI's exit code 3).
    pub fn is_refusal(err: &InspectError) -> bool {
        matches!(
            err,
            InspectError::Refused { .. }
                | InspectError::SbomMismatch { .. }
                | InspectError::SbomTooLarge { .. }
                | InspectError::SbomParse { .. }
        )
    }
}

/// Inspect `dir` (a `basalt image build` output): `release.signed`, verified against `trust`
/// at `now` when given (else only parsed, and [`Inspection::verified`] is false), and the
/// SBOM it lists.
pub fn inspect(
    dir: &Path,
    trust: Option<&TrustRoot>,
    now: DateTime<Utc>,
) -> Result<Inspection, InspectError> {
    let path = dir.join(RELEASE_SIGNED);
    let bytes = read_capped(&path, MAX_RELEASE_BYTES as u64)?;
    let refused = |source| InspectError::Refused {
        path: path.clone(),
        source: Box::new(source),
    };
    let (manifest, signed_by, verified) = match trust {
        Some(root) => {
            let v = verify_release(&bytes, root, &Policy::new(now)).map_err(refused)?;
            let ids = v.signed_by.iter().map(|k| k.to_string()).collect();
            (v.manifest, ids, true)
        }
        None => {
            let env = Envelope::from_json(&bytes, MAX_RELEASE_BYTES, Document::Release)
                .map_err(refused)?;
            (
                Manifest::from_json(&env.payload).map_err(refused)?,
                Vec::new(),
                false,
            )
        }
    };
    let sbom = match manifest.artifacts_of(ArtifactKind::Sbom).next() {
        None => None,
        Some(artifact) => {
            let sbom_path = dir.join(&artifact.name);
            let bytes = read_capped(&sbom_path, MAX_SBOM_BYTES)?;
            if bytes.len() as u64 > MAX_SBOM_BYTES {
                return Err(InspectError::SbomTooLarge { path: sbom_path });
            }
            let found = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
            if found != artifact.sha256.to_hex() || bytes.len() as u64 != artifact.size {
                return Err(InspectError::SbomMismatch {
                    path: sbom_path,
                    expected: artifact.sha256.to_hex(),
                    expected_size: artifact.size,
                    found,
                    found_size: bytes.len() as u64,
                });
            }
            let doc: SpdxDocument =
                serde_json::from_slice(&bytes).map_err(|e| InspectError::SbomParse {
                    path: sbom_path.clone(),
                    what: e.to_string(),
                })?;
            if doc.spdx_version != "SPDX-2.3" {
                return Err(InspectError::SbomParse {
                    path: sbom_path,
                    what: format!("spdxVersion is {:?}", doc.spdx_version),
                });
            }
            Some(sbom::summarize(&doc))
        }
    };
    Ok(Inspection {
        manifest,
        verified,
        signed_by,
        sbom,
    })
}

/// Read at most `limit + 1` bytes (so "too large" is seen without reading a huge file).
fn read_capped(path: &Path, limit: u64) -> Result<Vec<u8>, InspectError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|source| InspectError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|source| InspectError::Read {
            path: path.to_owned(),
            source,
        })?;
    Ok(out)
}
