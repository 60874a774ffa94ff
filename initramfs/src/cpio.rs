//! A reproducible cpio "newc" (SVR4, magic `070701`) archive: the format the kernel unpacks
//! an initramfs from (Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! Reproducible by construction: entries sorted by path (so parents precede children),
//! mtime 0, uid/gid 0, inode numbers 1.. in that order, no hard links, parents created
//! implicitly as 0755 directories. The archive is padded to a multiple of 512 bytes, as
//! GNU cpio and the kernel's `gen_init_cpio` do.
//!
//! [`parse`] reads newc back (for tests, fuzzing and `basalt initramfs list`); it accepts
//! only what a newc writer can produce and never panics on bad input.

use std::collections::BTreeMap;
use std::io::{self, Write};

use crate::error::{Error, Result};

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFMT: u32 = 0o170000;

/// What an archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file with its contents.
    File(Vec<u8>),
    /// A symbolic link with its target.
    Symlink(String),
    /// A character device node.
    CharDev {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

impl Kind {
    fn label(&self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File(_) => "file",
            Kind::Symlink(_) => "symlink",
            Kind::CharDev { .. } => "char device",
        }
    }

    fn type_bits(&self) -> u32 {
        match self {
            Kind::Dir => S_IFDIR,
            Kind::File(_) => S_IFREG,
            Kind::Symlink(_) => S_IFLNK,
            Kind::CharDev { .. } => S_IFCHR,
        }
    }
}

/// One archive entry: permission bits (`0o7777` mask) and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Permission bits (without the file type).
    pub perm: u32,
    /// What it is.
    pub kind: Kind,
}

/// An in-memory cpio archive keyed by normalised path (no leading `/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

/// Normalise an archive path: strip leading `/` and `./`, refuse empty, `.`, `..` and empty
/// components, NUL bytes.
pub fn normalize_path(path: &str) -> Result<String> {
    let invalid = |reason| Error::ArchivePathInvalid {
        path: path.to_owned(),
        reason,
    };
    let p = path.trim_start_matches('/');
    let p = p.strip_prefix("./").unwrap_or(p);
    if p.is_empty() {
        return Err(invalid("empty"));
    }
    if p.contains('\0') {
        return Err(invalid("contains NUL"));
    }
    if p == TRAILER {
        return Err(invalid("is the cpio trailer name"));
    }
    for c in p.split('/') {
        match c {
            "" => return Err(invalid("empty component")),
            "." | ".." => return Err(invalid("contains . or ..")),
            _ => {}
        }
    }
    Ok(p.to_owned())
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a directory (and its parents).
    pub fn add_dir(&mut self, path: &str, perm: u32) -> Result<()> {
        self.insert(path, perm, Kind::Dir)
    }

    /// Add a regular file (and its parent directories).
    pub fn add_file(&mut self, path: &str, perm: u32, data: Vec<u8>) -> Result<()> {
        self.insert(path, perm, Kind::File(data))
    }

    /// Add a symbolic link.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.insert(path, 0o777, Kind::Symlink(target.to_owned()))
    }

    /// Add a character device node.
    pub fn add_char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        self.insert(path, perm, Kind::CharDev { major, minor })
    }

    /// Insert an entry. Adding the same directory twice is fine (the later mode wins); any
    /// other collision is an error.
    pub fn insert(&mut self, path: &str, perm: u32, kind: Kind) -> Result<()> {
        let path = normalize_path(path)?;
        let mut parent = String::new();
        let components: Vec<&str> = path.split('/').collect();
        for c in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            match self.entries.get(&parent) {
                Some(Entry {
                    kind: Kind::Dir, ..
                }) => {}
                Some(e) => {
                    return Err(Error::ArchivePathConflict {
                        path: parent,
                        existing: e.kind.label(),
                        wanted: "directory",
                    })
                }
                None => {
                    self.entries.insert(
                        parent.clone(),
                        Entry {
                            perm: 0o755,
                            kind: Kind::Dir,
                        },
                    );
                }
            }
        }
        if let Some(existing) = self.entries.get(&path) {
            if !(existing.kind == Kind::Dir && kind == Kind::Dir) {
                return Err(Error::ArchivePathConflict {
                    path,
                    existing: existing.kind.label(),
                    wanted: kind.label(),
                });
            }
        }
        self.entries.insert(
            path,
            Entry {
                perm: perm & 0o7777,
                kind,
            },
        );
        Ok(())
    }

    /// The entries in archive order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// Look an entry up by path.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        normalize_path(path).ok().and_then(|p| self.entries.get(&p))
    }

    /// Write the archive in newc format; returns the number of bytes written.
    pub fn write_to<W: Write>(&self, w: &mut W) -> io::Result<u64> {
        let mut n = 0u64;
        for (ino, (path, e)) in (1u32..).zip(self.entries.iter()) {
            let (data, rmaj, rmin): (&[u8], u32, u32) = match &e.kind {
                Kind::Dir => (&[], 0, 0),
                Kind::File(d) => (d, 0, 0),
                Kind::Symlink(t) => (t.as_bytes(), 0, 0),
                Kind::CharDev { major, minor } => (&[], *major, *minor),
            };
            let header = Header {
                ino,
                mode: e.kind.type_bits() | e.perm,
                nlink: if e.kind == Kind::Dir { 2 } else { 1 },
                filesize: data.len(),
                rdevmajor: rmaj,
                rdevminor: rmin,
            };
            n += write_entry(w, &header, path, data)?;
        }
        let trailer = Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            filesize: 0,
            rdevmajor: 0,
            rdevminor: 0,
        };
        n += write_entry(w, &trailer, TRAILER, &[])?;
        let pad = (512 - (n % 512)) % 512;
        w.write_all(&vec![0u8; pad as usize])?;
        Ok(n + pad)
    }

    /// The archive as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.write_to(&mut v);
        v
    }
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    filesize: usize,
    rdevmajor: u32,
    rdevminor: u32,
}

fn write_entry<W: Write>(w: &mut W, h: &Header, name: &str, data: &[u8]) -> io::Result<u64> {
    let filesize = u32::try_from(h.filesize).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name}: newc cannot store files of 4 GiB or more"),
        )
    })?;
    let namesize = name.len() + 1;
    // Fields: ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
    // namesize check — all 8 hex digits.
    let fields = [
        h.ino,
        h.mode,
        0,
        0,
        h.nlink,
        0,
        filesize,
        0,
        0,
        h.rdevmajor,
        h.rdevminor,
        namesize as u32,
        0,
    ];
    let mut head = Vec::with_capacity(HEADER_LEN + namesize + 3);
    head.extend_from_slice(MAGIC);
    for f in fields {
        head.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    head.extend_from_slice(name.as_bytes());
    head.push(0);
    head.resize(align4(head.len()), 0);
    w.write_all(&head)?;
    w.write_all(data)?;
    let dpad = align4(data.len()) - data.len();
    w.write_all(&[0u8; 3][..dpad])?;
    Ok((head.len() + data.len() + dpad) as u64)
}

fn align4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Parse a newc archive (uncompressed). Stops at the trailer; hard links and file types
/// other than directory, file, symlink and char device are refused.
pub fn parse(bytes: &[u8]) -> Result<Archive> {
    let mut entries = BTreeMap::new();
    let mut off = 0usize;
    loop {
        let bad = |reason| Error::CpioParse {
            offset: off,
            reason,
        };
        let head = bytes
            .get(off..off + HEADER_LEN)
            .ok_or_else(|| bad("truncated header"))?;
        if &head[..6] != MAGIC {
            return Err(bad("bad magic (not newc 070701)"));
        }
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            let s = std::str::from_utf8(&head[6 + i * 8..14 + i * 8])
                .map_err(|_| bad("non-ASCII header field"))?;
            *v = u32::from_str_radix(s, 16).map_err(|_| bad("non-hex header field"))?;
        }
        let [_ino, mode, _uid, _gid, nlink, _mtime, filesize, _, _, rmaj, rmin, namesize, _] = f;
        let namesize = namesize as usize;
        if namesize == 0 {
            return Err(bad("empty name"));
        }
        let name_end = off + HEADER_LEN + namesize;
        let name = bytes
            .get(off + HEADER_LEN..name_end - 1)
            .ok_or_else(|| bad("truncated name"))?;
        if bytes.get(name_end - 1) != Some(&0) {
            return Err(bad("name not NUL-terminated"));
        }
        let name = std::str::from_utf8(name).map_err(|_| bad("name not UTF-8"))?;
        let data_start = align4(name_end);
        let data_end = data_start
            .checked_add(filesize as usize)
            .ok_or_else(|| bad("size overflow"))?;
        let data = bytes
            .get(data_start..data_end)
            .ok_or_else(|| bad("truncated data"))?;
        if name == TRAILER {
            return Ok(Archive { entries });
        }
        let kind = match mode & S_IFMT {
            S_IFDIR => Kind::Dir,
            S_IFREG if nlink <= 1 => Kind::File(data.to_vec()),
            S_IFREG => return Err(bad("hard links are not supported")),
            S_IFLNK => Kind::Symlink(
                String::from_utf8(data.to_vec()).map_err(|_| bad("symlink target not UTF-8"))?,
            ),
            S_IFCHR => Kind::CharDev {
                major: rmaj,
                minor: rmin,
            },
            _ => return Err(bad("unsupported file type")),
        };
        let path = normalize_path(name).map_err(|_| bad("invalid path"))?;
        entries.insert(
            path,
            Entry {
                perm: mode & 0o7777,
                kind,
            },
        );
        off = align4(data_end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.add_file("/init", 0o755, b"#!/bin/true\n".to_vec())
            .unwrap();
        a.add_file("etc/basalt/modules", 0o644, b"x".to_vec())
            .unwrap();
        a.add_char_dev("dev/console", 0o600, 5, 1).unwrap();
        a.add_symlink("bin", "usr/bin").unwrap();
        a.add_dir("run", 0o755).unwrap();
        a
    }

    #[test]
    fn parents_are_implicit_and_sorted_first() {
        let a = sample();
        let paths: Vec<&str> = a.entries().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "dev",
                "dev/console",
                "etc",
                "etc/basalt",
                "etc/basalt/modules",
                "init",
                "run"
            ]
        );
    }

    #[test]
    fn header_layout_follows_the_spec() {
        let mut a = Archive::new();
        a.add_file("ab", 0o644, b"hello".to_vec()).unwrap();
        let b = a.to_bytes();
        // First header: magic + 13 fields of 8 hex digits, name "ab\0" padded so that
        // header+name is a multiple of 4 (110 + 3 = 113 → 116), then 5 data bytes → 124.
        assert_eq!(&b[..6], b"070701");
        let field = |i: usize| std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap();
        assert_eq!(field(0), "00000001"); // ino
        assert_eq!(field(1), "000081A4"); // S_IFREG | 0644
        assert_eq!(field(5), "00000000"); // mtime
        assert_eq!(field(6), "00000005"); // filesize
        assert_eq!(field(11), "00000003"); // namesize incl. NUL
        assert_eq!(&b[110..113], b"ab\0");
        assert_eq!(&b[116..121], b"hello");
        assert_eq!(&b[124..130], b"070701"); // trailer header at the next 4-aligned offset
        assert_eq!(b.len() % 512, 0);
    }

    #[test]
    fn round_trip() {
        let a = sample();
        assert_eq!(parse(&a.to_bytes()).unwrap(), a);
    }

    #[test]
    fn bad_paths_and_conflicts() {
        let mut a = Archive::new();
        for p in ["", "/", "a/../b", "a//b", "./", "TRAILER!!!", "a\0b"] {
            assert!(a.add_dir(p, 0o755).is_err(), "{p:?}");
        }
        a.add_file("f", 0o644, vec![]).unwrap();
        assert!(matches!(
            a.add_file("f/g", 0o644, vec![]),
            Err(Error::ArchivePathConflict { .. })
        ));
        assert!(a.add_file("f", 0o644, vec![]).is_err());
        a.add_dir("d", 0o700).unwrap();
        a.add_dir("d", 0o755).unwrap();
        assert_eq!(a.get("/d").unwrap().perm, 0o755);
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(parse(b"").is_err());
        assert!(parse(&[b'0'; 200]).is_err());
        let mut b = sample().to_bytes();
        b.truncate(300);
        assert!(parse(&b).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn write_parse_round_trip(
            files in proptest::collection::btree_map(
                "[a-z]{1,8}(/[a-z]{1,8}){0,2}", proptest::collection::vec(0u8.., 0..64), 0..8)
        ) {
            let mut a = Archive::new();
            for (p, d) in &files {
                // Conflicts (a file where a directory is needed) are allowed to fail.
                let _ = a.add_file(p, 0o644, d.clone());
            }
            let bytes = a.to_bytes();
            proptest::prop_assert_eq!(parse(&bytes).unwrap(), a);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(0u8.., 0..600)) {
            let _ = parse(&bytes);
        }
    }
}
