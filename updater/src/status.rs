//! The daemon's persisted status: `/var/lib/basalt/updater/status.json`, replaced atomically
//! (`basalt_fsutil::write_atomic`) after every outcome, failures included.
//!
//! Owns: the file format, its version, loading with a size cap, and the "never brick" rule for
//! a bad file. Does not own: what the state means (`machine`), the engine's own files (trust
//! roots, the resume journal).
//!
//! Format: one JSON object, `"format": 1`, the machine's [`Snapshot`], the boot id of the boot
//! that wrote it (to tell "restarted" from "rebooted") and the signed envelope of the newest
//! accepted release (base64; verified again by the engine when loaded, never trusted as is).
//! Unknown fields are refused: a file written by a newer format is reported as such, not
//! half-read.
//!
//! A missing file is a first start. A file that is unreadable, truncated, corrupt, too large or
//! of an unknown format is **moved aside** (`status.json.bad-<UTC time>`, kept for a human to
//! read) and the daemon starts from what the disk says (`Machine::start` with no snapshot):
//! nothing on disk depends on this file to boot, so losing it loses history, not the node.

use std::path::{Path, PathBuf};

use basalt_manifest::chrono::{DateTime, Utc};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::machine::Snapshot;

/// The format this code writes and reads.
pub const STATUS_FORMAT: u32 = 1;
/// A status file larger than this is refused before parsing (history and an envelope are a
/// few KiB; a manifest envelope is capped at 1 MiB).
pub const MAX_STATUS_BYTES: u64 = 4 * 1024 * 1024;
/// The file name under the state directory.
pub const STATUS_FILE: &str = "status.json";

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusFile {
    pub format: u32,
    pub written_at: DateTime<Utc>,
    /// `/proc/sys/kernel/random/boot_id` of the boot that wrote the file.
    pub boot_id: String,
    pub machine: Snapshot,
    /// The signed envelope of `machine.known`, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_envelope: Option<String>,
}

/// Why a status file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("reading status file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("status file {path} is larger than {MAX_STATUS_BYTES} bytes ({size})")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("status file {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "status file {path} has format {found}; this basalt-updated reads format {STATUS_FORMAT}"
    )]
    UnknownFormat { path: PathBuf, found: u64 },
    #[error("writing status file: {0}")]
    Write(#[from] basalt_fsutil::Error),
    #[error("serialising the status: {0}")]
    Serialise(serde_json::Error),
    #[error("moving the unusable status file {path} aside to {to}: {source}")]
    SetAside {
        path: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StatusFile {
    /// A new file for `machine`.
    pub fn new(
        machine: Snapshot,
        boot_id: &str,
        known_envelope: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            format: STATUS_FORMAT,
            written_at: now,
            boot_id: boot_id.to_owned(),
            machine,
            known_envelope: known_envelope
                .map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        }
    }

    /// The envelope bytes, when present and valid base64.
    pub fn envelope(&self) -> Option<Vec<u8>> {
        self.known_envelope
            .as_ref()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
    }

    /// Parse a file's bytes. `path` is for messages.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, StatusError> {
        if bytes.len() as u64 > MAX_STATUS_BYTES {
            return Err(StatusError::TooLarge {
                path: path.to_owned(),
                size: bytes.len() as u64,
            });
        }
        let corrupt = |detail: String| StatusError::Corrupt {
            path: path.to_owned(),
            detail,
        };
        // The format first, so a newer file is reported as newer, not as corrupt.
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let format = value
            .get("format")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| corrupt("no numeric \"format\" field".to_owned()))?;
        if format != u64::from(STATUS_FORMAT) {
            return Err(StatusError::UnknownFormat {
                path: path.to_owned(),
                found: format,
            });
        }
        let file: StatusFile = serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
        if let Some(env) = &file.known_envelope {
            base64::engine::general_purpose::STANDARD
                .decode(env)
                .map_err(|e| corrupt(format!("known_envelope: {e}")))?;
        }
        Ok(file)
    }

    /// The bytes written (pretty JSON: a human reads this file when something went wrong).
    pub fn to_bytes(&self) -> Result<Vec<u8>, StatusError> {
        let mut out = serde_json::to_vec_pretty(self).map_err(StatusError::Serialise)?;
        out.push(b'\n');
        Ok(out)
    }

    /// Replace the file at `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), StatusError> {
        basalt_fsutil::write_atomic(path, &self.to_bytes()?, 0o644)?;
        Ok(())
    }
}

/// Load the status file: `Ok(None)` when it does not exist.
pub fn load(path: &Path) -> Result<Option<StatusFile>, StatusError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StatusError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    if meta.len() > MAX_STATUS_BYTES {
        return Err(StatusError::TooLarge {
            path: path.to_owned(),
            size: meta.len(),
        });
    }
    let bytes = std::fs::read(path).map_err(|source| StatusError::Read {
        path: path.to_owned(),
        source,
    })?;
    StatusFile::parse(&bytes, path).map(Some)
}

/// Move an unusable status file aside, keeping it for a human: returns the new path.
pub fn set_aside(path: &Path, now: DateTime<Utc>) -> Result<PathBuf, StatusError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| STATUS_FILE.to_owned());
    let stamp = now.format("%Y%m%dT%H%M%S%.3fZ");
    // Never overwrite an earlier kept copy (two bad files within the same millisecond, or a
    // clock that went back).
    let mut to = path.with_file_name(format!("{name}.bad-{stamp}"));
    let mut n = 1u32;
    while to.exists() && n < 1000 {
        to = path.with_file_name(format!("{name}.bad-{stamp}.{n}"));
        n += 1;
    }
    std::fs::rename(path, &to).map_err(|source| StatusError::SetAside {
        path: path.to_owned(),
        to: to.clone(),
        source,
    })?;
    if let Some(dir) = path.parent() {
        // Best effort: the rename is what matters; a lost rename means the next start moves
        // the same bad file aside again.
        let _ = basalt_fsutil::sync_dir(dir);
    }
    Ok(to)
}
