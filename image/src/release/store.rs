//! The publisher's side of a static release repository (layout: `basalt_manifest::repo`):
//! the lock, the trust-root chain, content-addressed blobs, history files and channel heads.
//!
//! Every file is written with `basalt_fsutil` (temporary file, fsync, rename, fsync dir), so
//! a reader — a node polling over HTTP, a mirror syncing — sees either the old or the new file,
//! never half of one. Blobs are immutable (mode 0444) and named by their SHA-256: an existing
//! blob is re-hashed before it is reused, never trusted by name, and replaced when it does not
//! match. The channel head is replaced last, after the blobs and the history file it refers to
//! are durable: a node that sees a new head can fetch everything it names.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use basalt_manifest::repo;
use basalt_manifest::{Digest, TrustRoot, MAX_TRUST_ROOT_BYTES};
use ring::digest::{Context, SHA256};

use super::error::{io, replace, ReleaseError};
use crate::lock::FileLock;

/// Mode of published files: world-readable (a web server serves them), blobs read-only.
const FILE_MODE: u32 = 0o644;
const BLOB_MODE: u32 = 0o444;
/// Lock file serialising publishers (`flock`): two publishes never interleave.
pub const LOCK_FILE: &str = ".publish.lock";
/// Folder for blobs being compressed, before they get their content address.
const INCOMING_DIR: &str = ".incoming";
/// Most trust-root generations a repository may hold (a bound on the chain walk).
pub const MAX_GENERATIONS: u64 = 1024;

/// An open repository folder, locked for writing while this value lives.
#[derive(Debug)]
pub struct Repo {
    root: PathBuf,
    _lock: Option<FileLock>,
}

/// SHA-256 of everything `reader` yields.
pub(crate) fn sha256_reader(mut reader: impl Read) -> std::io::Result<(Digest, u64)> {
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        ctx.update(&buf[..n]);
        total += n as u64;
    }
    let mut d = [0u8; 32];
    d.copy_from_slice(ctx.finish().as_ref());
    Ok((Digest(d), total))
}

impl Repo {
    /// Open `root` for publishing: create the folder if needed and take the publish lock
    /// (waits for another publisher to finish).
    pub fn lock(root: &Path) -> Result<Repo, ReleaseError> {
        fs::create_dir_all(root).map_err(io("create repository folder", root))?;
        let lock_path = root.join(LOCK_FILE);
        let lock = FileLock::acquire(&lock_path).map_err(io("lock", &lock_path))?;
        Ok(Repo {
            root: root.to_path_buf(),
            _lock: Some(lock),
        })
    }

    /// Open `root` for reading only (no lock).
    pub fn read_only(root: &Path) -> Repo {
        Repo {
            root: root.to_path_buf(),
            _lock: None,
        }
    }

    /// The repository folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host path of a repository path from `basalt_manifest::repo`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn ensure_parent(&self, path: &Path) -> Result<(), ReleaseError> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io("create folder", parent))?;
        }
        Ok(())
    }

    /// Read a file if it exists (at most `cap` bytes are read; a longer file is returned
    /// truncated to `cap + 1` bytes so the parser's size check refuses it).
    pub fn read_optional(&self, rel: &str, cap: usize) -> Result<Option<Vec<u8>>, ReleaseError> {
        let path = self.path(rel);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("open", &path)(e)),
        };
        let mut out = Vec::new();
        file.take(cap as u64 + 1)
            .read_to_end(&mut out)
            .map_err(io("read", &path))?;
        Ok(Some(out))
    }

    /// The trust-root chain as published: generation 1 (self-signed) and every rotation,
    /// each checked with `TrustRoot::rotate`. Returns the newest root and the generation
    /// count; `None` when `roots/1.root.json` does not exist.
    pub fn trust(&self) -> Result<Option<TrustRoot>, ReleaseError> {
        let Some(first) = self.read_optional(&repo::root_path(1), MAX_TRUST_ROOT_BYTES)? else {
            return Ok(None);
        };
        let mut root =
            TrustRoot::from_initial_envelope(&first).map_err(|source| ReleaseError::TrustRoot {
                path: self.path(&repo::root_path(1)),
                source: Box::new(source),
            })?;
        if root.generation() != 1 {
            return Err(ReleaseError::TrustChainGap {
                repo: self.root.clone(),
                reason: format!("roots/1.root.json holds generation {}", root.generation()),
            });
        }
        for g in 2..=MAX_GENERATIONS {
            let rel = repo::root_path(g);
            let Some(bytes) = self.read_optional(&rel, MAX_TRUST_ROOT_BYTES)? else {
                break;
            };
            root = root
                .rotate(&bytes)
                .map_err(|source| ReleaseError::TrustRoot {
                    path: self.path(&rel),
                    source: Box::new(source),
                })?;
        }
        Ok(Some(root))
    }

    /// Write `bytes` as `rel` unless it already holds exactly them. Returns whether it wrote.
    pub fn write_file(&self, rel: &str, bytes: &[u8]) -> Result<bool, ReleaseError> {
        let path = self.path(rel);
        if fs::read(&path).ok().as_deref() == Some(bytes) {
            return Ok(false);
        }
        self.ensure_parent(&path)?;
        basalt_fsutil::write_atomic(&path, bytes, FILE_MODE).map_err(replace(&path))?;
        Ok(true)
    }

    /// Whether the blob `digest` exists *and* its content hashes to `digest` (re-hashed,
    /// never trusted by name).
    pub fn blob_ok(&self, digest: &Digest, len: u64) -> Result<bool, ReleaseError> {
        let path = self.path(&repo::blob_path(digest));
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io("open", &path)(e)),
        };
        let (found, n) = sha256_reader(file).map_err(io("read", &path))?;
        Ok(found == *digest && n == len)
    }

    /// Store small `bytes` as a blob (e.g. a frame index). Returns whether it wrote.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<(Digest, bool), ReleaseError> {
        let (digest, _) = sha256_reader(bytes).map_err(io("hash", Path::new("memory")))?;
        if self.blob_ok(&digest, bytes.len() as u64)? {
            return Ok((digest, false));
        }
        let path = self.path(&repo::blob_path(&digest));
        self.ensure_parent(&path)?;
        basalt_fsutil::write_atomic(&path, bytes, BLOB_MODE).map_err(replace(&path))?;
        Ok((digest, true))
    }

    /// A scratch file in the repository's incoming folder (same file system as the blobs),
    /// removed when dropped.
    pub fn incoming(&self, name: &str) -> Result<Incoming, ReleaseError> {
        let dir = self.root.join(INCOMING_DIR);
        fs::create_dir_all(&dir).map_err(io("create folder", &dir))?;
        let path = dir.join(format!("{name}.{}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io("create", &path))?;
        Ok(Incoming { path, file })
    }

    /// Store the content of `incoming` (whose SHA-256 and length the caller computed while
    /// writing it) as blob `digest`: reused when a blob with that content exists, else
    /// written atomically. Returns whether it wrote.
    pub fn put_blob_file(
        &self,
        incoming: &Incoming,
        digest: &Digest,
        len: u64,
    ) -> Result<bool, ReleaseError> {
        if self.blob_ok(digest, len)? {
            return Ok(false);
        }
        let path = self.path(&repo::blob_path(digest));
        self.ensure_parent(&path)?;
        let mut src = File::open(&incoming.path).map_err(io("open", &incoming.path))?;
        basalt_fsutil::write_atomic_with(&path, BLOB_MODE, |f| {
            let (found, n) = {
                let mut tee = HashingWriter::new(f);
                std::io::copy(&mut src, &mut tee)?;
                tee.finish()
            };
            if found != *digest || n != len {
                return Err(std::io::Error::other(format!(
                    "the staged blob changed while it was stored ({n} bytes, sha256 {found})"
                )));
            }
            Ok(())
        })
        .map_err(replace(&path))?;
        Ok(true)
    }
}

/// A scratch file in `REPO/.incoming`, removed on drop.
#[derive(Debug)]
pub struct Incoming {
    pub path: PathBuf,
    pub file: File,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A writer that hashes what passes through.
struct HashingWriter<'a, W: Write> {
    inner: &'a mut W,
    ctx: Context,
    len: u64,
}

impl<'a, W: Write> HashingWriter<'a, W> {
    fn new(inner: &'a mut W) -> Self {
        HashingWriter {
            inner,
            ctx: Context::new(&SHA256),
            len: 0,
        }
    }

    fn finish(self) -> (Digest, u64) {
        let mut d = [0u8; 32];
        d.copy_from_slice(self.ctx.finish().as_ref());
        (Digest(d), self.len)
    }
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
