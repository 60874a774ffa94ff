//! The node's trust root: the generation shipped in `/usr` plus the newer generations learnt
//! from the repository, persisted under the state folder (`trust/<N>.root.json`).
//!
//! Loading: the shipped root is the anchor (self-signed, `TrustRoot::from_initial_envelope`);
//! then `trust/<anchor+1>.root.json`, `<anchor+2>`, … are applied with `TrustRoot::rotate`
//! while they exist. The state folder is on the writable root, which an attacker may own:
//! a persisted file can therefore never add trust on its own (each must be a valid rotation
//! from the anchor's chain); a file that does not rotate is ignored (logged) and replaced on
//! the next walk, so a damaged state folder never bricks updates.
//!
//! Walking (every check): fetch `roots/<g+1>.root.json`, `<g+2>`, … until the repository
//! answers `NotFound`, each through `TrustRoot::rotate` (threshold of the old keys and of the
//! new ones, generation exactly +1), each persisted atomically before the next, at most
//! `max_trust_steps` per check. A refused rotation is an error: the node keeps the root it has
//! and trusts nothing newer.

use std::path::{Path, PathBuf};

use basalt_manifest::{repo, TrustRoot, MAX_TRUST_ROOT_BYTES};

use super::error::Error;
use super::io::NodeIo;
use crate::source::{Source, SourceError};

/// Most persisted generations loaded after the anchor (a bound, far above any real chain).
const MAX_PERSISTED: u64 = 4096;

/// How to read files of at most `cap` bytes (an oversized one comes back `cap + 1` long, so
/// the parser's size check refuses it).
fn read_capped(path: &Path, cap: usize) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    f.take(cap as u64 + 1).read_to_end(&mut out)?;
    Ok(Some(out))
}

/// The persisted file of generation `g`.
pub fn persisted_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("{generation}.root.json"))
}

/// The anchor plus the persisted generations (see the module docs).
pub fn load(anchor: &Path, dir: &Path) -> Result<TrustRoot, Error> {
    let bytes = read_capped(anchor, MAX_TRUST_ROOT_BYTES)
        .map_err(super::error::io("read the trust root", anchor))?
        .ok_or_else(|| Error::Anchor {
            path: anchor.to_path_buf(),
            source: Box::new(basalt_manifest::Error::InvalidContent {
                document: basalt_manifest::Document::TrustRoot,
                reason: "the file does not exist".into(),
            }),
        })?;
    let mut root = TrustRoot::from_initial_envelope(&bytes).map_err(|source| Error::Anchor {
        path: anchor.to_path_buf(),
        source: Box::new(source),
    })?;
    for _ in 0..MAX_PERSISTED {
        let path = persisted_path(dir, root.generation() + 1);
        let bytes = match read_capped(&path, MAX_TRUST_ROOT_BYTES) {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "persisted trust root unreadable; ignored");
                break;
            }
        };
        match root.rotate(&bytes) {
            Ok(next) => root = next,
            Err(e) => {
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "persisted trust root does not rotate from generation {}; ignored (it is fetched again)",
                    root.generation()
                );
                break;
            }
        }
    }
    Ok(root)
}

/// Walk the repository's chain from `root` (see the module docs); returns the newest root.
pub fn walk(
    mut root: TrustRoot,
    source: &dyn Source,
    io: &dyn NodeIo,
    dir: &Path,
    max_steps: u64,
) -> Result<TrustRoot, Error> {
    let start = root.generation();
    for _ in 0..max_steps {
        let next = root.generation() + 1;
        let rel = repo::root_path(next);
        let bytes = match source.read_small(&rel, MAX_TRUST_ROOT_BYTES as u64) {
            Ok(b) => b,
            Err(SourceError::NotFound { .. }) => return Ok(root),
            Err(source) => {
                return Err(Error::Fetch {
                    what: format!("trust root generation {next}"),
                    source,
                })
            }
        };
        let rotated = root.rotate(&bytes).map_err(|e| Error::TrustRotation {
            generation: next,
            location: source.location(&rel),
            source: Box::new(e),
        })?;
        std::fs::create_dir_all(dir).map_err(super::error::io("create", dir))?;
        let path = persisted_path(dir, next);
        io.write_atomic(&path, &bytes).map_err(|e| Error::Io {
            op: "persist the trust root",
            path: e.path,
            source: e.source,
        })?;
        tracing::info!(generation = next, "trust root rotated");
        root = rotated;
    }
    // Still more after `max_steps`? Then refuse rather than walk forever.
    match source.read_small(
        &repo::root_path(root.generation() + 1),
        MAX_TRUST_ROOT_BYTES as u64,
    ) {
        Err(SourceError::NotFound { .. }) => Ok(root),
        _ => Err(Error::TrustChainTooLong {
            from: start,
            steps: max_steps,
        }),
    }
}
