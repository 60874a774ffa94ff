//! Positional I/O on "a file or block device + byte offset", with errors that name the path.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::Path;

use crate::error::{Error, Result};

/// An open file or block device, and the path used in error messages. Reads and writes are
/// positional (`pread`/`pwrite`), so one `Device` can be shared by threads and the data and
/// hash areas may live in the same file.
#[derive(Debug, Clone, Copy)]
pub struct Device<'a> {
    /// The open file (read access for data; read-write for a hash area being formatted).
    pub file: &'a File,
    /// Its path, for messages only.
    pub path: &'a Path,
}

impl<'a> Device<'a> {
    /// Pair an open file with its path.
    pub fn new(file: &'a File, path: &'a Path) -> Self {
        Device { file, path }
    }

    /// Fill `buf` from byte `offset`; a short file is an error (`UnexpectedEof`).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| Error::Read {
                path: self.path.to_path_buf(),
                offset,
                source,
            })
    }

    /// Write all of `buf` at byte `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|source| Error::Write {
                path: self.path.to_path_buf(),
                offset,
                source,
            })
    }

    /// Size in bytes: the length of a regular file, or the size of a block device.
    pub fn size(&self) -> Result<u64> {
        let open_err = |source| Error::Open {
            path: self.path.to_path_buf(),
            source,
        };
        let meta = self.file.metadata().map_err(open_err)?;
        if meta.file_type().is_block_device() {
            // `&File` implements Seek; the position is irrelevant to our positional I/O.
            let mut f = self.file;
            f.seek(SeekFrom::End(0)).map_err(open_err)
        } else {
            Ok(meta.len())
        }
    }

    /// Grow a regular file to at least `len` bytes (the new bytes read as zeros, as after
    /// veritysetup). Block devices are left alone; writing past their end fails later.
    pub fn ensure_len(&self, len: u64) -> Result<()> {
        let meta = self.file.metadata().map_err(|source| Error::Open {
            path: self.path.to_path_buf(),
            source,
        })?;
        if meta.file_type().is_file() && meta.len() < len {
            self.file.set_len(len).map_err(|source| Error::Write {
                path: self.path.to_path_buf(),
                offset: len,
                source,
            })?;
        }
        Ok(())
    }

    /// Flush written data to stable storage.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|source| Error::Write {
            path: self.path.to_path_buf(),
            offset: 0,
            source,
        })
    }

    /// True when both handles refer to the same file or device (same device and inode).
    pub fn same_file(&self, other: &Device<'_>) -> Result<bool> {
        let meta = |d: &Device<'_>| {
            d.file.metadata().map_err(|source| Error::Open {
                path: d.path.to_path_buf(),
                source,
            })
        };
        let (a, b) = (meta(self)?, meta(other)?);
        Ok(a.dev() == b.dev() && a.ino() == b.ino())
    }
}
