//! Partition-range I/O: a partition seen as "this device or file, from this byte offset, for
//! this many bytes". The host kernel here cannot scan GPT partitions and a node may not have
//! udev links yet, so slots are always addressed this way, on a whole disk or an image file.
//!
//! Writers move data through one fixed buffer ([`COPY_BUFFER`]), refuse any byte outside their
//! range, and `fdatasync` on [`RangeWriter::finish`]. Writers for slots are only handed out by
//! [`crate::Inventory::slot_writer`], which refuses the booted slot.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::gpt::DiskIo;
use crate::Error;

/// Size of the one buffer a copy uses (bounded memory whatever the image size).
pub const COPY_BUFFER: usize = 1 << 20;

/// A byte range of a device or file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRange {
    /// The whole disk (block device or image file).
    pub path: PathBuf,
    /// First byte of the partition.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl PartitionRange {
    /// Open the range read-only.
    pub fn open_read(&self) -> Result<RangeReader<std::fs::File>, Error> {
        let file = std::fs::File::open(&self.path).map_err(|source| Error::Io {
            op: "open for reading",
            path: self.path.clone(),
            source,
        })?;
        Ok(RangeReader::new(file, self.offset, self.len))
    }
}

/// `Read + Seek` confined to `[offset, offset + len)` of an inner reader; position 0 is the
/// first byte of the range and reads stop at its end. What `basalt-verity` consumes.
#[derive(Debug)]
pub struct RangeReader<R> {
    inner: R,
    offset: u64,
    len: u64,
    pos: u64,
}

impl<R: Read + Seek> RangeReader<R> {
    /// Confine `inner` to `len` bytes from `offset`.
    pub fn new(inner: R, offset: u64, len: u64) -> Self {
        RangeReader {
            inner,
            offset,
            len,
            pos: 0,
        }
    }

    /// Length of the range.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty range.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<R: Read + Seek> Read for RangeReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let at = self
            .offset
            .checked_add(self.pos)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range offset overflows"))?;
        self.inner.seek(SeekFrom::Start(at))?;
        let got = self.inner.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl<R: Read + Seek> Seek for RangeReader<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the range",
            )),
        }
    }
}

/// Sequential writer confined to a byte range of a disk. Every write beyond the range is
/// refused with [`Error::RangeOverflow`] before anything is written.
#[derive(Debug)]
pub struct RangeWriter<D> {
    dev: D,
    path: PathBuf,
    offset: u64,
    len: u64,
    pos: u64,
}

impl<D: DiskIo> RangeWriter<D> {
    /// Only [`crate::Inventory`] builds writers, after checking the slot is not booted.
    pub(crate) fn new(dev: D, path: &Path, offset: u64, len: u64) -> Self {
        RangeWriter {
            dev,
            path: path.to_path_buf(),
            offset,
            len,
            pos: 0,
        }
    }

    /// The next write's position in the range (bytes written so far, unless moved).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Move the next write to `pos` (a resumed install continues mid-partition). Refuses a
    /// position past the end of the range.
    pub fn set_position(&mut self, pos: u64) -> Result<(), Error> {
        if pos > self.len {
            return Err(Error::RangeOverflow {
                path: self.path.clone(),
                offset: self.offset,
                len: self.len,
                at: pos,
                attempted: 0,
            });
        }
        self.pos = pos;
        Ok(())
    }

    /// Make the bytes written so far durable (`fdatasync`), keeping the writer.
    pub fn sync(&mut self) -> Result<(), Error> {
        self.dev.sync_data().map_err(|source| Error::Io {
            op: "sync partition range of",
            path: self.path.clone(),
            source,
        })
    }

    /// Length of the range.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty range.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append `buf` at the current position, or refuse if it would leave the range.
    pub fn write(&mut self, buf: &[u8]) -> Result<(), Error> {
        let end = self.pos.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(Error::RangeOverflow {
                path: self.path.clone(),
                offset: self.offset,
                len: self.len,
                at: self.pos,
                attempted: buf.len() as u64,
            });
        }
        self.dev
            .seek(SeekFrom::Start(self.offset + self.pos))
            .and_then(|_| io::Write::write_all(&mut self.dev, buf))
            .map_err(|source| Error::Io {
                op: "write partition range of",
                path: self.path.clone(),
                source,
            })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Copy all of `src` through one [`COPY_BUFFER`]-sized buffer. Fails with
    /// [`Error::RangeOverflow`] as soon as `src` has more bytes than the range has room for.
    pub fn copy_from(&mut self, src: &mut dyn Read, src_path: &Path) -> Result<u64, Error> {
        let mut buf = vec![0u8; COPY_BUFFER];
        let mut total = 0u64;
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::Io {
                        op: "read",
                        path: src_path.to_path_buf(),
                        source,
                    })
                }
            };
            self.write(&buf[..n])?;
            total += n as u64;
        }
    }

    /// Make the written bytes durable (`fdatasync`) and return the final position.
    pub fn finish(mut self) -> Result<u64, Error> {
        self.sync()?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn writer_refuses_to_leave_range_and_leaves_neighbours_alone() {
        let mut disk = Cursor::new(vec![0xaau8; 64]);
        let mut w = RangeWriter::new(&mut disk, Path::new("mem"), 16, 8);
        w.write(&[1; 5]).unwrap();
        let err = w.write(&[2; 4]).unwrap_err();
        assert!(matches!(
            err,
            Error::RangeOverflow {
                at: 5,
                attempted: 4,
                ..
            }
        ));
        w.write(&[3; 3]).unwrap();
        assert_eq!(w.finish().unwrap(), 8);
        let d = disk.into_inner();
        assert_eq!(&d[..16], &[0xaa; 16]);
        assert_eq!(&d[16..24], &[1, 1, 1, 1, 1, 3, 3, 3]);
        assert_eq!(&d[24..], &[0xaa; 40]);
    }

    #[test]
    fn copy_from_too_long_source_is_refused() {
        let mut disk = Cursor::new(vec![0u8; 32]);
        let mut w = RangeWriter::new(&mut disk, Path::new("mem"), 8, 8);
        let mut src = Cursor::new(vec![9u8; 9]);
        assert!(matches!(
            w.copy_from(&mut src, Path::new("src")),
            Err(Error::RangeOverflow { .. })
        ));
        // Nothing outside the range was touched.
        let d = disk.into_inner();
        assert!(d[..8].iter().chain(&d[16..]).all(|b| *b == 0));
    }

    #[test]
    fn set_position_writes_mid_range_and_refuses_past_the_end() {
        let mut disk = Cursor::new(vec![0u8; 32]);
        let mut w = RangeWriter::new(&mut disk, Path::new("mem"), 8, 8);
        w.set_position(6).unwrap();
        w.write(&[7, 7]).unwrap();
        assert!(matches!(
            w.write(&[1]),
            Err(Error::RangeOverflow { at: 8, .. })
        ));
        assert!(matches!(
            w.set_position(9),
            Err(Error::RangeOverflow { at: 9, .. })
        ));
        w.set_position(8).unwrap();
        assert_eq!(w.finish().unwrap(), 8);
        let d = disk.into_inner();
        assert_eq!(&d[14..16], &[7, 7]);
        assert!(d[..14].iter().chain(&d[16..]).all(|b| *b == 0));
    }

    #[test]
    fn reader_sees_only_its_range() {
        let data: Vec<u8> = (0..64).collect();
        let mut r = RangeReader::new(Cursor::new(data), 10, 6);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, vec![10, 11, 12, 13, 14, 15]);
        r.seek(SeekFrom::End(-2)).unwrap();
        out.clear();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, vec![14, 15]);
        assert!(r.seek(SeekFrom::Current(-10)).is_err());
    }
}
