//! The resume journal (`state_dir/download.json`): which release is being written into
//! which slot, and how many frames of each artifact are durably written.
//!
//! Written atomically (through [`NodeIo::write_atomic`]) before the slot is touched, after
//! each checkpoint (the sink is `fdatasync`ed *before* the journal records frames as done),
//! and once the slot is named. It is a hint, never trusted: on resume every frame it claims
//! is read back and re-hashed against the signed frame index, and the download continues at
//! the first frame that does not match. A journal for another release or slot, a corrupt or
//! unknown-version journal, means starting over (logged).

use std::collections::BTreeMap;
use std::path::Path;

use basalt_disk::Slot;
use basalt_manifest::semver::Version;
use basalt_manifest::Digest;
use serde::{Deserialize, Serialize};

use super::error::Error;
use super::io::NodeIo;

/// The journal format version this build reads and writes.
pub const JOURNAL_VERSION: u32 = 1;
/// Journals larger than this are not read (a few hundred bytes in practice).
const MAX_JOURNAL_BYTES: u64 = 64 << 10;

/// One download in progress (or done).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    pub journal_version: u32,
    /// SHA-256 of the signed release envelope being installed.
    pub envelope_sha256: Digest,
    /// `A` or `B`.
    pub slot: String,
    pub version: Version,
    /// The release's verity root hash.
    pub usr_hash: Digest,
    /// Artifact name → frames durably written (a claim, re-verified on resume).
    pub frames_done: BTreeMap<String, usize>,
    /// The slot was verified and named.
    pub complete: bool,
    /// The download kept the node's extension set (node-image-only) instead of staging the
    /// release's: `apply` checks the set the same way.
    #[serde(default)]
    pub node_image_only: bool,
}

impl Journal {
    /// A fresh journal.
    pub fn new(envelope_sha256: Digest, slot: Slot, version: Version, usr_hash: Digest) -> Self {
        Journal {
            journal_version: JOURNAL_VERSION,
            envelope_sha256,
            slot: slot.to_string(),
            version,
            usr_hash,
            frames_done: BTreeMap::new(),
            complete: false,
            node_image_only: false,
        }
    }

    /// Whether this journal is about `envelope_sha256` going into `slot`.
    pub fn is_for(&self, envelope_sha256: &Digest, slot: Slot) -> bool {
        self.envelope_sha256 == *envelope_sha256 && self.slot == slot.to_string()
    }

    /// Frames of `artifact` claimed done.
    pub fn done(&self, artifact: &str) -> usize {
        self.frames_done.get(artifact).copied().unwrap_or(0)
    }
}

/// Read the journal; `None` when absent or unusable (logged: starting over is safe).
pub fn load(path: &Path) -> Option<Journal> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "download journal unreadable; starting over");
            return None;
        }
    };
    let mut bytes = Vec::new();
    if let Err(e) = file.take(MAX_JOURNAL_BYTES + 1).read_to_end(&mut bytes) {
        tracing::warn!(path = %path.display(), error = %e, "download journal unreadable; starting over");
        return None;
    }
    match serde_json::from_slice::<Journal>(&bytes) {
        Ok(j) if j.journal_version == JOURNAL_VERSION => Some(j),
        Ok(j) => {
            tracing::warn!(path = %path.display(), version = j.journal_version, "download journal of another version; starting over");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "download journal corrupt; starting over");
            None
        }
    }
}

/// Write the journal atomically.
pub fn save(io: &dyn NodeIo, path: &Path, journal: &Journal) -> Result<(), Error> {
    let bytes = serde_json::to_vec_pretty(journal).map_err(|e| Error::State {
        path: path.to_path_buf(),
        reason: format!("encoding the journal: {e}"),
    })?;
    io.write_atomic(path, &bytes).map_err(|e| Error::Io {
        op: "write the download journal",
        path: e.path,
        source: e.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("download.json");
        assert!(load(&path).is_none());
        let mut j = Journal::new(
            Digest([1; 32]),
            Slot::B,
            Version::new(2, 0, 0),
            Digest([2; 32]),
        );
        j.frames_done.insert("usr.img".into(), 7);
        save(&super::super::io::RealIo, &path, &j).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back, j);
        assert!(back.is_for(&Digest([1; 32]), Slot::B));
        assert!(!back.is_for(&Digest([1; 32]), Slot::A));
        assert!(!back.is_for(&Digest([3; 32]), Slot::B));
        assert_eq!((back.done("usr.img"), back.done("vmlinuz")), (7, 0));
        for bad in [&b"{"[..], &b"null"[..], br#"{"journal_version":2}"#] {
            std::fs::write(&path, bad).unwrap();
            assert!(load(&path).is_none());
        }
        let text = serde_json::to_string(&j)
            .unwrap()
            .replace("\"complete\"", "\"extra\":1,\"complete\"");
        std::fs::write(&path, text).unwrap();
        assert!(load(&path).is_none(), "unknown fields are refused");
    }
}
