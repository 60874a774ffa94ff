//! A release repository in a local folder (`file://`): an air-gapped repository disk, a
//! mounted image, or the folder `basalt release publish` wrote, in tests.
//!
//! Paths come from `basalt_manifest::repo` and are checked again here: relative, no `.`/`..`
//! components, no NUL — so nothing outside the folder is ever opened, even if a caller were to
//! pass a hostile name. Symbolic links inside the folder are followed (a repository may be
//! assembled with links); the bytes are verified by the caller anyway.
//!
//! Length rules are those of [`Source`]: a range past the end of the file, a file shorter than
//! `expected_len` or longer than it are [`SourceError::Length`]. The returned reader stops at
//! the end of the range and fails if the file ends early (a file truncated while it is read).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use super::{ByteRange, Source, SourceError};

/// A repository in a local folder.
#[derive(Debug, Clone)]
pub struct FileSource {
    root: PathBuf,
}

impl FileSource {
    /// The repository in `root` (a folder; `file://` URLs are stripped of their scheme).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root: PathBuf = root.into();
        let stripped = root
            .to_str()
            .and_then(|s| s.strip_prefix("file://"))
            .map(PathBuf::from);
        FileSource {
            root: stripped.unwrap_or(root),
        }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn resolve(&self, path: &str) -> Result<PathBuf, SourceError> {
        let rel = Path::new(path);
        let ok = !path.is_empty()
            && !path.contains('\0')
            && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !ok {
            return Err(SourceError::Transport {
                location: self.location(path),
                detail: "not a plain relative repository path".into(),
            });
        }
        Ok(self.root.join(rel))
    }
}

/// A reader of exactly `len` bytes of a file, which fails if the file ends before.
#[derive(Debug)]
struct Exact {
    file: File,
    left: u64,
    location: String,
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                SourceError::Length {
                    location: self.location.clone(),
                    detail: format!("the file ended {} bytes early", self.left),
                },
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

impl Source for FileSource {
    fn open(
        &self,
        path: &str,
        range: Option<ByteRange>,
        expected_len: Option<u64>,
    ) -> Result<Box<dyn Read + Send>, SourceError> {
        let location = self.location(path);
        let host = self.resolve(path)?;
        let io_err = |source: io::Error| {
            if source.kind() == io::ErrorKind::NotFound {
                SourceError::NotFound {
                    location: location.clone(),
                }
            } else {
                SourceError::Io {
                    location: location.clone(),
                    source,
                }
            }
        };
        let mut file = File::open(&host).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        if !meta.is_file() {
            return Err(SourceError::NotFound { location });
        }
        let size = meta.len();
        let (offset, len) = match range {
            None => (0, size),
            Some(r) => {
                if r.offset > size {
                    return Err(SourceError::Length {
                        location,
                        detail: format!("range starts at {}, the file has {size} bytes", r.offset),
                    });
                }
                let available = size - r.offset;
                match r.len {
                    None => (r.offset, available),
                    Some(n) if n <= available => (r.offset, n),
                    Some(n) => {
                        return Err(SourceError::Length {
                            location,
                            detail: format!(
                                "range of {n} bytes at {}, the file has {available} there",
                                r.offset
                            ),
                        })
                    }
                }
            }
        };
        if let Some(expected) = expected_len {
            if len != expected {
                let word = if len > expected { "longer" } else { "shorter" };
                return Err(SourceError::Length {
                    location,
                    detail: format!("{len} bytes, {word} than the expected {expected}"),
                });
            }
        }
        file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
        Ok(Box::new(Exact {
            file,
            left: len,
            location,
        }))
    }

    fn location(&self, path: &str) -> String {
        format!("file://{}", self.root.join(path).display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> (tempfile::TempDir, FileSource) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("blobs/a"), b"0123456789").unwrap();
        let s = FileSource::new(dir.path());
        (dir, s)
    }

    fn read(s: &FileSource, range: Option<ByteRange>, expected: Option<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        s.open("blobs/a", range, expected)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn whole_files_and_ranges() {
        let (_d, s) = source();
        assert_eq!(read(&s, None, Some(10)), b"0123456789");
        let r = |offset, len| Some(ByteRange { offset, len });
        assert_eq!(read(&s, r(3, None), Some(7)), b"3456789");
        assert_eq!(read(&s, r(3, Some(2)), None), b"34");
        assert_eq!(read(&s, r(10, None), Some(0)), b"");
        assert!(s.location("blobs/a").starts_with("file://"));
    }

    #[test]
    fn length_and_path_refusals() {
        let (_d, s) = source();
        let err = |path: &str, range, expected| s.open(path, range, expected).err().unwrap();
        assert!(matches!(
            err("blobs/b", None, None),
            SourceError::NotFound { .. }
        ));
        assert!(matches!(
            err("blobs", None, None),
            SourceError::NotFound { .. }
        ));
        assert!(matches!(
            err("blobs/a", None, Some(9)),
            SourceError::Length { .. }
        ));
        assert!(matches!(
            err("blobs/a", None, Some(11)),
            SourceError::Length { .. }
        ));
        let past = Some(ByteRange {
            offset: 11,
            len: None,
        });
        assert!(matches!(
            err("blobs/a", past, None),
            SourceError::Length { .. }
        ));
        let long = Some(ByteRange {
            offset: 5,
            len: Some(6),
        });
        assert!(matches!(
            err("blobs/a", long, None),
            SourceError::Length { .. }
        ));
        for bad in [
            "../x",
            "/etc/passwd",
            "blobs/../../x",
            "",
            "a\0b",
            "./blobs/a",
        ] {
            assert!(
                matches!(err(bad, None, None), SourceError::Transport { .. }),
                "{bad:?}"
            );
        }
        // read_small: the cap is enforced.
        assert_eq!(s.read_small("blobs/a", 10).unwrap(), b"0123456789");
        assert!(matches!(
            s.read_small("blobs/a", 9),
            Err(SourceError::Length { .. })
        ));
    }

    #[test]
    fn a_file_truncated_while_read_is_an_error() {
        let (d, s) = source();
        let mut r = s.open("blobs/a", None, Some(10)).unwrap();
        let mut buf = [0u8; 4];
        r.read_exact(&mut buf).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(d.path().join("blobs/a"))
            .unwrap()
            .set_len(6)
            .unwrap();
        let mut rest = Vec::new();
        let e = r.read_to_end(&mut rest).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.get_ref().unwrap().to_string().contains("ended"), "{e}");
    }
}
