//! basalt-init's failure records, on the daemon's side: read them at start, hand them to the
//! state machine (which attaches them to the rollback they explain, or reports them as
//! refused boots), delete the EFI variable once the status file that reports them is on disk.
//!
//! Owns: the daemon's I/O on the variable (`BasaltInitFailure-<vendor GUID>` in efivarfs,
//! `/sys/firmware/efi/efivars`). Does not own: the name and the line format — both are
//! `basalt_initramfs::failrec`'s (the writer's), whose decoder is used as is — nor what a record
//! means for the update (`machine`).
//!
//! Order, and why: read → the machine takes the records into its snapshot (with the
//! variable's digest) → the status file is written → the variable is deleted. A crash between
//! the last two repeats nothing (the digest in the status marks the variable as reported) and
//! loses nothing (the variable is still there). Deleting on efivarfs needs the immutable flag
//! cleared first (efivarfs sets it on variables of unknown vendors; `CAP_LINUX_IMMUTABLE`),
//! which `basalt_initramfs::sys::set_immutable` does for the writer too.
//!
//! Trust: root on the node (or anyone who writes firmware variables) can forge a record. The
//! records are diagnostic text in the history, never a reason for a boot decision; the
//! variable is read with a size cap and lines that do not parse are logged and skipped.

use std::io::Read;
use std::path::{Path, PathBuf};

use basalt_disk::Slot;
use basalt_initramfs::failrec;
use basalt_manifest::Digest;

use crate::machine::{InitFailure, InitFailures};

/// Where efivarfs is mounted on a node.
pub const EFIVARS: &str = failrec::EFIVARS_DIR;

/// The variable could not be read or deleted.
#[derive(Debug, thiserror::Error)]
pub enum BootFailError {
    #[error("reading basalt-init's failure records {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("deleting basalt-init's failure records {path} (needs CAP_LINUX_IMMUTABLE and a writable efivarfs): {source}")]
    Clear {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The variable's file in the efivarfs folder `efivars`.
pub fn path(efivars: &Path) -> PathBuf {
    efivars.join(failrec::var_file_name())
}

/// The records in the variable, `None` when there is no variable (no EFI, or nothing failed).
pub fn read(efivars: &Path) -> Result<Option<InitFailures>, BootFailError> {
    let path = path(efivars);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(BootFailError::Read { path, source }),
    };
    let mut bytes = Vec::new();
    // efivarfs files do not seek and are read in one go: 4 attribute bytes, then the data.
    file.take(failrec::MAX_VARIABLE as u64 + 4)
        .read_to_end(&mut bytes)
        .map_err(|source| BootFailError::Read {
            path: path.clone(),
            source,
        })?;
    let (records, bad) = failrec::decode(bytes.get(4..).unwrap_or_default());
    for line in bad {
        tracing::warn!(path = %path.display(), "skipped a failure record that does not parse: {line}");
    }
    let records = records.into_iter().map(convert).collect();
    Ok(Some(InitFailures {
        records,
        digest: digest(&bytes),
    }))
}

fn convert(r: failrec::Record) -> InitFailure {
    InitFailure {
        reason: r.reason,
        slot: match r.slot {
            Some('a') => Some(Slot::A),
            Some('b') => Some(Slot::B),
            _ => None,
        },
        usrhash: r.usrhash.as_deref().and_then(Digest::from_hex),
        detail: r.detail,
    }
}

fn digest(bytes: &[u8]) -> Digest {
    let mut d = [0u8; 32];
    d.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    Digest(d)
}

/// Delete the variable (a missing one is fine).
pub fn clear(efivars: &Path) -> Result<(), BootFailError> {
    let path = path(efivars);
    let fail = |source| BootFailError::Clear {
        path: path.clone(),
        source,
    };
    match basalt_initramfs::sys::set_immutable(&path, false) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(fail(e)),
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(fail(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_initramfs::failrec::{store, Record};
    use basalt_initramfs::reason::Reason;

    #[test]
    fn records_written_by_basalt_init_are_read_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        clear(dir.path()).unwrap();
        let hash = "ab".repeat(32);
        let cmd = format!("console=ttyS0 usrhash={hash} basalt.slot=b");
        for _ in 0..2 {
            let r = Record::new(Reason::UsrhashNotSigned, &cmd, Some(1.5), "not signed");
            store(dir.path(), &r).unwrap();
        }
        let r = Record::new(Reason::NoBootDisk, "quiet", None, "no disk");
        store(dir.path(), &r).unwrap();
        let got = read(dir.path()).unwrap().unwrap();
        assert_eq!(got.records.len(), 3);
        assert_eq!(got.records[0].reason, "usrhash-not-signed");
        assert_eq!(got.records[0].slot, Some(Slot::B));
        assert_eq!(got.records[0].usrhash, Digest::from_hex(&hash));
        assert_eq!(got.records[2].slot, None);
        assert_eq!(got.records[2].usrhash, None);
        // The same bytes, the same digest; one more record, another.
        assert_eq!(read(dir.path()).unwrap().unwrap().digest, got.digest);
        clear(dir.path()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
    }

    #[test]
    fn garbage_and_oversized_variables_give_what_parses() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path());
        let good = Record::new(Reason::MountRoot, "basalt.slot=a", None, "x").line();
        let mut content = 7u32.to_le_bytes().to_vec();
        content.extend(format!("junk\n{good}\n\u{1}\u{2}\n").as_bytes());
        content.extend(vec![b'y'; 10_000]);
        std::fs::write(&p, &content).unwrap();
        let got = read(dir.path()).unwrap().unwrap();
        assert_eq!(got.records.len(), 1);
        assert_eq!(got.records[0].reason, "mount-root");
        // Shorter than the attribute bytes: a variable with no records (still cleared).
        std::fs::write(&p, [7u8, 0]).unwrap();
        assert!(read(dir.path()).unwrap().unwrap().records.is_empty());
        clear(dir.path()).unwrap();
        assert!(!p.exists());
    }
}
