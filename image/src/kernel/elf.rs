//! Just enough ELF64 reading to check two facts before QEMU gets a file: that an extracted
//! `vmlinux` carries the PVH entry note QEMU needs for direct boot of an uncompressed kernel,
//! and that the `busybox` put into an initramfs is static (no program interpreter).
//!
//! Layout per the System V ABI (ELF-64 Object File Format, version 1.5): the file header is 64
//! bytes, program headers `e_phnum` × `e_phentsize` at `e_phoff`; notes are `namesz, descsz,
//! type` (u32 each) then the name and the descriptor, each padded to 4 bytes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::error::{KernelError as Error, Result};

/// `PT_INTERP`: the program asks for a dynamic loader.
const PT_INTERP: u32 = 3;
/// `PT_NOTE`: a segment of notes.
const PT_NOTE: u32 = 4;
/// `XEN_ELFNOTE_PHYS32_ENTRY` (xen/include/public/elfnote.h): the 32-bit PVH entry point that
/// QEMU's `-kernel` loader looks for in an uncompressed ELF kernel.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Upper bound on the bytes of notes read from one segment (the kernel's are < 1 KiB).
const MAX_NOTE_SEGMENT: u64 = 1 << 20;
/// Upper bound on program headers (the kernel has 5, busybox about 10).
const MAX_PHNUM: u16 = 256;

/// One program header, the fields this module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramHeader {
    /// `p_type`.
    pub kind: u32,
    /// `p_offset`: where the segment starts in the file.
    pub offset: u64,
    /// `p_filesz`: its size in the file.
    pub file_size: u64,
}

/// One ELF note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The owner name without its NUL (`"Xen"`, `"GNU"`, `"Linux"`).
    pub name: Vec<u8>,
    /// The note type.
    pub kind: u32,
    /// The descriptor bytes.
    pub desc: Vec<u8>,
}

/// A little-endian ELF64 file opened for header reads.
#[derive(Debug)]
pub struct Elf64 {
    file: File,
    path: std::path::PathBuf,
    /// The program headers, in file order.
    pub program_headers: Vec<ProgramHeader>,
}

impl Elf64 {
    /// Opens `path` and reads its program headers; anything but a little-endian ELF64 file is
    /// [`Error::NotElf64`].
    pub fn open(path: &Path) -> Result<Self> {
        let read_err = |source| Error::ReadFile {
            path: path.to_path_buf(),
            source,
        };
        let not_elf = |reason: &'static str| Error::NotElf64 {
            path: path.to_path_buf(),
            reason,
        };
        let mut file = File::open(path).map_err(read_err)?;
        let mut header = [0u8; 64];
        file.read_exact(&mut header).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                not_elf("shorter than an ELF64 header")
            } else {
                read_err(e)
            }
        })?;
        if header[..4] != *b"\x7fELF" {
            return Err(not_elf("no ELF magic"));
        }
        if header[4] != 2 {
            return Err(not_elf("not ELFCLASS64"));
        }
        if header[5] != 1 {
            return Err(not_elf("not little-endian"));
        }
        let phoff = u64_at(&header, 32);
        let phentsize = u16_at(&header, 54);
        let phnum = u16_at(&header, 56);
        if phnum > MAX_PHNUM || (phnum > 0 && phentsize < 56) {
            return Err(not_elf("implausible program header table"));
        }
        let mut table = vec![0u8; usize::from(phentsize) * usize::from(phnum)];
        file.seek(SeekFrom::Start(phoff)).map_err(read_err)?;
        file.read_exact(&mut table)
            .map_err(|_| not_elf("program header table past the end of the file"))?;
        let program_headers = table
            .chunks_exact(usize::from(phentsize.max(1)))
            .map(|ph| ProgramHeader {
                kind: u32_at(ph, 0),
                offset: u64_at(ph, 8),
                file_size: u64_at(ph, 32),
            })
            .collect();
        Ok(Self {
            file,
            path: path.to_path_buf(),
            program_headers,
        })
    }

    /// True when the file asks for a dynamic loader (`PT_INTERP`), i.e. it is not static.
    pub fn has_interpreter(&self) -> bool {
        self.program_headers.iter().any(|ph| ph.kind == PT_INTERP)
    }

    /// All notes of all `PT_NOTE` segments.
    pub fn notes(&mut self) -> Result<Vec<Note>> {
        let mut notes = Vec::new();
        let segments: Vec<ProgramHeader> = self
            .program_headers
            .iter()
            .copied()
            .filter(|ph| ph.kind == PT_NOTE)
            .collect();
        for ph in segments {
            let mut bytes = vec![0u8; ph.file_size.min(MAX_NOTE_SEGMENT) as usize];
            self.file
                .seek(SeekFrom::Start(ph.offset))
                .and_then(|_| self.file.read_exact(&mut bytes))
                .map_err(|source| Error::ReadFile {
                    path: self.path.clone(),
                    source,
                })?;
            notes.extend(parse_notes(&bytes));
        }
        Ok(notes)
    }

    /// True when a `Xen` note of type [`XEN_ELFNOTE_PHYS32_ENTRY`] is present.
    pub fn has_pvh_entry(&mut self) -> Result<bool> {
        Ok(self
            .notes()?
            .iter()
            .any(|n| n.name == b"Xen" && n.kind == XEN_ELFNOTE_PHYS32_ENTRY))
    }
}

/// Parses a note segment; a truncated trailing note ends the list.
pub fn parse_notes(mut bytes: &[u8]) -> Vec<Note> {
    let mut notes = Vec::new();
    while bytes.len() >= 12 {
        let namesz = u32_at(bytes, 0) as usize;
        let descsz = u32_at(bytes, 4) as usize;
        let kind = u32_at(bytes, 8);
        let name_end = 12usize.saturating_add(namesz);
        let desc_start = 12usize.saturating_add(pad4(namesz));
        let desc_end = desc_start.saturating_add(descsz);
        let next = desc_start.saturating_add(pad4(descsz));
        if desc_end > bytes.len() {
            break;
        }
        let mut name = bytes[12..name_end].to_vec();
        if name.last() == Some(&0) {
            name.pop();
        }
        notes.push(Note {
            name,
            kind,
            desc: bytes[desc_start..desc_end].to_vec(),
        });
        bytes = bytes.get(next..).unwrap_or_default();
    }
    notes
}

fn pad4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend((name.len() as u32 + 1).to_le_bytes());
        out.extend((desc.len() as u32).to_le_bytes());
        out.extend(kind.to_le_bytes());
        out.extend(name);
        out.push(0);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out.extend(desc);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out
    }

    #[test]
    fn notes_round_trip_with_padding() {
        let mut seg = note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY, &[1, 2, 3, 4]);
        seg.extend(note(b"Linux", 6, b"linux\0"));
        let notes = parse_notes(&seg);
        assert_eq!(notes.len(), 2);
        assert_eq!(notes[0].name, b"Xen");
        assert_eq!(notes[0].kind, XEN_ELFNOTE_PHYS32_ENTRY);
        assert_eq!(notes[0].desc, [1, 2, 3, 4]);
        assert_eq!(notes[1].name, b"Linux");
        assert_eq!(notes[1].desc, b"linux\0");
    }

    #[test]
    fn truncated_note_stops_parsing() {
        let seg = note(b"Xen", 18, &[0; 8]);
        assert!(parse_notes(&seg[..seg.len() - 4]).is_empty());
        assert!(parse_notes(&[0xff; 12]).is_empty());
    }

    #[test]
    fn non_elf_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, [0u8; 100]).unwrap();
        assert!(matches!(Elf64::open(&path), Err(Error::NotElf64 { .. })));
        std::fs::write(&path, b"\x7fELF").unwrap();
        assert!(matches!(Elf64::open(&path), Err(Error::NotElf64 { .. })));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn parse_notes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = parse_notes(&bytes);
        }

        #[test]
        fn notes_round_trip(
            items in proptest::collection::vec(
                ("[A-Za-z]{0,12}", proptest::prelude::any::<u32>(), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)),
                0..6,
            )
        ) {
            let seg: Vec<u8> = items.iter().flat_map(|(n, k, d)| note(n.as_bytes(), *k, d)).collect();
            let parsed = parse_notes(&seg);
            proptest::prop_assert_eq!(parsed.len(), items.len());
            for (p, (n, k, d)) in parsed.iter().zip(&items) {
                proptest::prop_assert_eq!(&p.name, n.as_bytes());
                proptest::prop_assert_eq!(p.kind, *k);
                proptest::prop_assert_eq!(&p.desc, d);
            }
        }
    }

    /// Peer: the system's own `sh` is a dynamically linked ELF64 (it has an interpreter).
    #[test]
    fn system_shell_is_dynamic_elf64() {
        let elf = Elf64::open(Path::new("/bin/dash")).unwrap();
        assert!(elf.has_interpreter());
    }
}
