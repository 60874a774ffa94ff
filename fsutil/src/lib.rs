//! File helpers every Basalt tool on a normal filesystem shares, so each exists once.
//!
//! Owns: replacing a file atomically and durably ([`write_atomic`], and
//! [`write_atomic_with`] for streamed content), syncing a directory
//! ([`sync_dir`]). Does not own: ESP files (`basalt-disk` writes those through its `Esp`
//! abstraction, which may be a FAT image) or anything the initramfs does (it stays std-only and
//! small).
//!
//! Why the exact sequence in [`write_atomic`]: after a crash the path holds either the old or
//! the new bytes, never a mix or an empty file. The temporary file sits in the same directory
//! (a rename never crosses filesystems), is fsynced before the rename (so the rename cannot be
//! persisted before the data), and the directory is fsynced after it (so the rename itself is
//! persisted before we report success).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Which step of an atomic replace failed, and on which path.
#[derive(Debug)]
pub struct Error {
    /// The step: "create", "write", "sync", "rename", "sync directory".
    pub op: &'static str,
    /// The file or directory the step worked on.
    pub path: PathBuf,
    /// The OS error.
    pub source: io::Error,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.op, self.path.display(), self.source)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A temporary name for replacing `path`: same directory, hidden, with the process id and a
/// per-process sequence number, so two writers of the same file — two processes, or two
/// threads of one process (the test harness writes shared fixtures from parallel tests) —
/// never share a temporary. Each call returns a new name.
pub fn temp_path(path: &Path) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{seq}", std::process::id()))
}

/// Removes the temporaries that [`write_atomic`] writers left in `dir` (recursively) when
/// they were killed or their write was torn: hidden files named `.NAME.tmp-PID-SEQ` whose
/// process `PID` is not running (`/proc/PID` absent). A running writer's temporary is left
/// alone, as is every other file. Meant for the owner of a state folder at start-up; returns
/// the paths removed. Unreadable folders are skipped; a failed removal is an error.
pub fn remove_stale_temporaries(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut removed = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let Ok(entries) = fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(path);
                continue;
            }
            let name = entry.file_name();
            let Some(pid) = temporary_pid(&name.to_string_lossy()) else {
                continue;
            };
            if Path::new("/proc").join(pid.to_string()).exists() {
                continue;
            }
            fs::remove_file(&path).map_err(err("remove stale temporary", &path))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// The writer's process id in a [`temp_path`] name (`.NAME.tmp-PID-SEQ`), if it is one.
fn temporary_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(".tmp-")?;
    let (pid, seq) = tail.split_once('-')?;
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(seq)).then(|| pid.parse().ok())?
}

/// Replace `path` with `bytes`: write a temporary file next to it, fsync it, rename it over
/// `path`, fsync the directory. `mode` sets the new file's permission bits (e.g. `0o600` for a
/// private key, `0o644` for a status file). On error the temporary file is removed and `path`
/// is unchanged.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    write_atomic_with(path, mode, |f| f.write_all(bytes))
}

/// [`write_atomic`] for content that is streamed rather than held in memory (a large blob):
/// `fill` writes the content into the temporary file; the same fsync, rename and directory
/// fsync follow. An error from `fill` is reported as the "write" step; the temporary file is
/// removed and `path` is unchanged.
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(err("create", &tmp))?;
        fill(&mut f).map_err(err("write", &tmp))?;
        f.sync_all().map_err(err("sync", &tmp))?;
        fs::rename(&tmp, path).map_err(err("rename", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(parent_dir(path))
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsync a directory, so renames and creations inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("sync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        // No temporary left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn failure_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"old", 0o644).unwrap();
        // A file where the temporary's folder must be makes "create" fail.
        let e = write_atomic(&path.join("g"), b"new", 0o644).unwrap_err();
        assert_eq!(e.op, "create");
        assert!(e.to_string().contains(".g.tmp-"), "{e}");
        // A failing write leaves the old content and no temporary.
        let e =
            write_atomic_with(&path, 0o644, |_| Err(io::Error::other("disk full"))).unwrap_err();
        assert_eq!(e.op, "write");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn stale_temporaries_of_dead_writers_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("staging");
        fs::create_dir(&sub).unwrap();
        // A pid above the kernel's limit (2^22) is never running.
        let dead = sub.join(".journal.json.tmp-4999999-3");
        let live = dir
            .path()
            .join(format!(".status.json.tmp-{}-0", std::process::id()));
        let others = [
            dir.path().join("status.json"),
            dir.path().join(".status.json.tmp-x-1"),
            dir.path().join("status.json.tmp-4999999-1"),
            dir.path().join(".status.json.tmp-4999999"),
        ];
        for p in others.iter().chain([&dead, &live]) {
            fs::write(p, b"x").unwrap();
        }
        assert_eq!(
            remove_stale_temporaries(dir.path()).unwrap(),
            vec![dead.clone()]
        );
        assert!(!dead.exists() && live.exists());
        assert!(others.iter().all(|p| p.exists()));
        // A torn write of this very function's writer: named as write_atomic names it.
        let torn = temp_path(&dir.path().join("f"));
        assert_eq!(
            temporary_pid(&torn.file_name().unwrap().to_string_lossy()),
            Some(std::process::id())
        );
    }

    #[test]
    fn parallel_writers_of_one_file_in_one_process_never_share_a_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared");
        std::thread::scope(|scope| {
            for t in 0..8u8 {
                let path = &path;
                scope.spawn(move || {
                    for _ in 0..50 {
                        write_atomic(path, &[t; 4096], 0o644).unwrap();
                    }
                });
            }
        });
        let bytes = fs::read(&path).unwrap();
        assert!(bytes.len() == 4096 && bytes.iter().all(|b| *b == bytes[0]));
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temporaries left behind");
    }

    #[test]
    fn streamed_content_and_a_failing_fill() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        write_atomic_with(&path, 0o444, |f| {
            f.write_all(b"ab")?;
            f.write_all(b"cd")
        })
        .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"abcd");
        let e = write_atomic_with(&path, 0o444, |f| {
            f.write_all(b"partial")?;
            Err(io::Error::other("source dropped"))
        })
        .unwrap_err();
        assert_eq!(e.op, "write");
        assert_eq!(fs::read(&path).unwrap(), b"abcd");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn missing_directory_is_named() {
        let e = write_atomic(Path::new("/nonexistent-basalt/x"), b"", 0o644).unwrap_err();
        assert_eq!(e.op, "create");
        assert!(e.to_string().contains("/nonexistent-basalt/"), "{e}");
    }
}
