//! The sections of a PE32+ image, read the way systemd-stub reads a unified kernel image
//! (UKI): the section table after the COFF and optional headers, a section named by its
//! 8-byte name, its content the first `min(VirtualSize, SizeOfRawData)` bytes at
//! `PointerToRawData`.
//!
//! Used by the updater to read a release UKI's `.cmdline` before it is staged: the command
//! line must name the release's own `usrhash=` ([`uki_usrhash`]). Bounded like the GPT
//! reader — every offset, count and size read from the file is checked before anything is
//! allocated or read, so a hostile file costs at most [`MAX_SECTION`] bytes of memory — and
//! strict where systemd-stub is lenient: a name that appears twice is refused (which copy a
//! loader uses is not something to guess).
//!
//! Does not own: building or signing UKIs (`basalt_image::build::uki`), checking Secure
//! Boot signatures (the firmware does, `sbverify` on the build side).

use std::fmt;
use std::io::{Read, Seek, SeekFrom};

use crate::cmdline;
use crate::roothash::RootHash;

/// Where the PE header may start at the latest (`e_lfanew`): stubs put it below 256 bytes.
const MAX_PE_OFFSET: u32 = 64 * 1024;
/// The PE format's own limit on sections.
const MAX_SECTIONS: u16 = 96;
/// Largest optional header accepted (PE32+ with 16 data directories is 240 bytes).
const MAX_OPTIONAL_HEADER: u16 = 4096;
/// Largest section content this reader returns (a command line or os-release is a few
/// hundred bytes; the kernel's own limit for the command line is 2 KiB–64 KiB).
pub const MAX_SECTION: u32 = 256 * 1024;
const SECTION_HEADER: usize = 40;
const PE32_PLUS: u16 = 0x20b;

/// A PE image (or a UKI in it) that cannot be read as one.
#[derive(Debug)]
pub struct PeError {
    /// What was being read (`UKI /path`).
    pub what: String,
    /// Why it was refused.
    pub reason: String,
}

impl fmt::Display for PeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.reason)
    }
}

impl std::error::Error for PeError {}

/// One entry of the section table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The name, NUL padding removed (`.cmdline`).
    pub name: String,
    /// `VirtualSize`: the content's length in memory.
    pub virtual_size: u32,
    /// `SizeOfRawData`: the bytes stored in the file (file-aligned).
    pub raw_size: u32,
    /// `PointerToRawData`: where they are.
    pub raw_offset: u32,
}

impl Section {
    /// Bytes of content in the file: `min(VirtualSize, SizeOfRawData)`.
    pub fn content_len(&self) -> u32 {
        self.virtual_size.min(self.raw_size)
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The section table of the PE32+ image in `file` (`what` names it in errors). Reads only
/// the headers.
pub fn sections<R: Read + Seek + ?Sized>(
    file: &mut R,
    what: &str,
) -> Result<Vec<Section>, PeError> {
    let bad = |reason: String| PeError {
        what: what.to_owned(),
        reason,
    };
    let len = file
        .seek(SeekFrom::End(0))
        .map_err(|e| bad(format!("seek: {e}")))?;
    let mut read_at = |offset: u64, n: usize, part: &str| -> Result<Vec<u8>, PeError> {
        let end = offset.checked_add(n as u64);
        if end.is_none_or(|end| end > len) {
            return Err(bad(format!(
                "the {part} ({n} bytes at {offset}) lies beyond the file's end ({len} bytes)"
            )));
        }
        let mut buf = vec![0u8; n];
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| bad(format!("reading the {part}: {e}")))?;
        Ok(buf)
    };
    let dos = read_at(0, 64, "DOS header")?;
    if &dos[..2] != b"MZ" {
        return Err(bad("no MZ signature: not a PE image".into()));
    }
    let pe = le32(&dos, 0x3c);
    if pe > MAX_PE_OFFSET {
        return Err(bad(format!(
            "PE header offset {pe} is beyond {MAX_PE_OFFSET}"
        )));
    }
    let coff = read_at(u64::from(pe), 24, "COFF header")?;
    if &coff[..4] != b"PE\0\0" {
        return Err(bad("no PE signature".into()));
    }
    let count = le16(&coff, 6);
    let opt_size = le16(&coff, 20);
    if count > MAX_SECTIONS {
        return Err(bad(format!("{count} sections (at most {MAX_SECTIONS})")));
    }
    if !(2..=MAX_OPTIONAL_HEADER).contains(&opt_size) {
        return Err(bad(format!("optional header of {opt_size} bytes")));
    }
    let opt = read_at(u64::from(pe) + 24, usize::from(opt_size), "optional header")?;
    if le16(&opt, 0) != PE32_PLUS {
        return Err(bad("not a PE32+ image".into()));
    }
    let table = read_at(
        u64::from(pe) + 24 + u64::from(opt_size),
        usize::from(count) * SECTION_HEADER,
        "section table",
    )?;
    Ok(table
        .chunks_exact(SECTION_HEADER)
        .map(|h| Section {
            name: String::from_utf8_lossy(&h[..8])
                .trim_end_matches('\0')
                .to_owned(),
            virtual_size: le32(h, 8),
            raw_size: le32(h, 16),
            raw_offset: le32(h, 20),
        })
        .collect())
}

/// The content of the section `name` of the PE32+ image in `file`: `None` when it has no
/// such section; refused when the name appears twice, or the content is larger than
/// [`MAX_SECTION`] or lies beyond the file.
pub fn section<R: Read + Seek + ?Sized>(
    file: &mut R,
    what: &str,
    name: &str,
) -> Result<Option<Vec<u8>>, PeError> {
    let bad = |reason: String| PeError {
        what: what.to_owned(),
        reason,
    };
    let all = sections(file, what)?;
    let mut found = all.iter().filter(|s| s.name == name);
    let Some(s) = found.next() else {
        return Ok(None);
    };
    if found.next().is_some() {
        return Err(bad(format!("section {name} appears more than once")));
    }
    let n = s.content_len();
    if n > MAX_SECTION {
        return Err(bad(format!(
            "section {name} holds {n} bytes (at most {MAX_SECTION} are read)"
        )));
    }
    let len = file
        .seek(SeekFrom::End(0))
        .map_err(|e| bad(format!("seek: {e}")))?;
    if u64::from(s.raw_offset) + u64::from(n) > len {
        return Err(bad(format!(
            "section {name} ({n} bytes at {}) lies beyond the file's end ({len} bytes)",
            s.raw_offset
        )));
    }
    let mut buf = vec![0u8; n as usize];
    file.seek(SeekFrom::Start(u64::from(s.raw_offset)))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(|e| bad(format!("reading section {name}: {e}")))?;
    Ok(Some(buf))
}

/// The command line embedded in the UKI in `file` (its `.cmdline` section as text, trailing
/// NULs and whitespace removed). Refused: no `.cmdline` (a UKI without one takes its command
/// line from the boot loader, i.e. from whoever can write the ESP), text that is not UTF-8,
/// or holds a NUL or newline inside.
pub fn uki_cmdline<R: Read + Seek + ?Sized>(file: &mut R, what: &str) -> Result<String, PeError> {
    let bad = |reason: String| PeError {
        what: what.to_owned(),
        reason,
    };
    let bytes = section(file, what, ".cmdline")?
        .ok_or_else(|| bad("no .cmdline section: the command line is not signed".into()))?;
    let text =
        std::str::from_utf8(&bytes).map_err(|e| bad(format!(".cmdline is not UTF-8 text: {e}")))?;
    let text = text.trim_end_matches(['\0', ' ', '\t', '\n', '\r']);
    if text.contains(['\0', '\n', '\r']) {
        return Err(bad(".cmdline holds a NUL or a line break".into()));
    }
    Ok(text.to_owned())
}

/// The `/usr` root hash the UKI in `file` boots: the `usrhash=` of its embedded command line
/// (the one [`cmdline::usrhash`] reader basalt-init uses). Refused when the line names none
/// or a malformed one.
pub fn uki_usrhash<R: Read + Seek + ?Sized>(
    file: &mut R,
    what: &str,
) -> Result<(RootHash, String), PeError> {
    let line = uki_cmdline(file, what)?;
    match cmdline::usrhash(&line) {
        Some(Ok(hash)) => Ok((hash, line)),
        Some(Err(e)) => Err(PeError {
            what: what.to_owned(),
            reason: format!("the .cmdline's usrhash= is unusable: {e}"),
        }),
        None => Err(PeError {
            what: what.to_owned(),
            reason: format!("the .cmdline names no usrhash=: {line:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const H: &str = "4b2f0c3ff1b7d7c6a1d7c0bb53a0f1c2e3d4c5b6a79888776655443322110000";

    /// A minimal PE32+ with `sections` (name, content) stored back to back after the headers.
    pub(crate) fn pe(sections: &[(&str, &[u8])]) -> Vec<u8> {
        let pe_at = 0x80usize;
        let opt_size = 240usize;
        let table = pe_at + 24 + opt_size;
        let mut data_at = table + sections.len() * SECTION_HEADER;
        data_at = data_at.div_ceil(512) * 512;
        let mut out = vec![0u8; data_at];
        out[..2].copy_from_slice(b"MZ");
        out[0x3c..0x40].copy_from_slice(&(pe_at as u32).to_le_bytes());
        out[pe_at..pe_at + 4].copy_from_slice(b"PE\0\0");
        out[pe_at + 6..pe_at + 8].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        out[pe_at + 20..pe_at + 22].copy_from_slice(&(opt_size as u16).to_le_bytes());
        out[pe_at + 24..pe_at + 26].copy_from_slice(&PE32_PLUS.to_le_bytes());
        for (i, (name, data)) in sections.iter().enumerate() {
            let h = table + i * SECTION_HEADER;
            let raw = data.len().div_ceil(512) * 512;
            out[h..h + name.len()].copy_from_slice(name.as_bytes());
            out[h + 8..h + 12].copy_from_slice(&(data.len() as u32).to_le_bytes());
            out[h + 16..h + 20].copy_from_slice(&(raw as u32).to_le_bytes());
            let at = out.len();
            out[h + 20..h + 24].copy_from_slice(&(at as u32).to_le_bytes());
            out.extend_from_slice(data);
            out.resize(at + raw, 0);
        }
        out
    }

    fn usrhash_of(bytes: &[u8]) -> Result<(RootHash, String), PeError> {
        uki_usrhash(&mut Cursor::new(bytes), "UKI test.efi")
    }

    #[test]
    fn the_cmdline_section_names_the_usrhash() {
        let line = format!("console=ttyS0 usrhash={H} quiet\0\0");
        let img = pe(&[(".osrel", b"ID=basalt\n"), (".cmdline", line.as_bytes())]);
        let (hash, text) = usrhash_of(&img).unwrap();
        assert_eq!(hash.to_hex(), H);
        assert_eq!(text, format!("console=ttyS0 usrhash={H} quiet"));
        let all = sections(&mut Cursor::new(&img), "x").unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].name, ".cmdline");
        assert_eq!(
            section(&mut Cursor::new(&img), "x", ".linux").unwrap(),
            None
        );
    }

    #[test]
    fn hostile_or_unusable_images_are_refused_with_a_reason() {
        let good = format!("usrhash={H}");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                b"not a PE at all, but long enough to hold a DOS header ......".repeat(2),
                "MZ",
            ),
            (b"MZ".to_vec(), "beyond the file's end"),
            (pe(&[(".osrel", b"ID=basalt")]), "no .cmdline"),
            (pe(&[(".cmdline", b"console=ttyS0")]), "names no usrhash"),
            (pe(&[(".cmdline", b"usrhash=abc")]), "unusable"),
            (pe(&[(".cmdline", b"usrhash=\xff")]), "UTF-8"),
            (
                pe(&[(".cmdline", format!("{good}\ninit=/x").as_bytes())]),
                "line break",
            ),
            (
                pe(&[(".cmdline", good.as_bytes()), (".cmdline", good.as_bytes())]),
                "more than once",
            ),
        ];
        for (bytes, want) in cases {
            let err = usrhash_of(&bytes).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
            assert!(err.starts_with("UKI test.efi: "), "{err}");
        }
        // Sizes from the file are bounded before anything is read.
        let mut huge = pe(&[(".cmdline", good.as_bytes())]);
        let table = 0x80 + 24 + 240;
        huge[table + 8..table + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        huge[table + 16..table + 20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(usrhash_of(&huge)
            .unwrap_err()
            .to_string()
            .contains("at most"));
        let mut far = pe(&[(".cmdline", good.as_bytes())]);
        far[table + 20..table + 24].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
        assert!(usrhash_of(&far).unwrap_err().to_string().contains("beyond"));
        let mut many = pe(&[(".cmdline", good.as_bytes())]);
        many[0x80 + 6..0x80 + 8].copy_from_slice(&1000u16.to_le_bytes());
        assert!(usrhash_of(&many)
            .unwrap_err()
            .to_string()
            .contains("sections"));
        let mut pe32 = pe(&[(".cmdline", good.as_bytes())]);
        pe32[0x80 + 24..0x80 + 26].copy_from_slice(&0x10bu16.to_le_bytes());
        assert!(usrhash_of(&pe32).unwrap_err().to_string().contains("PE32+"));
    }
}
