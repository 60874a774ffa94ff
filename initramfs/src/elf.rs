//! The shared-library closure of a host executable, for putting tools such as `mke2fs` into
//! the initramfs: the ELF interpreter (`PT_INTERP`) and every `DT_NEEDED` library, found the
//! way the dynamic loader would find them without `/etc/ld.so.cache` (`DT_RUNPATH`/`DT_RPATH`
//! then the standard library directories), recursively.
//!
//! We parse the ELF ourselves instead of running `ldd`: `ldd` executes the binary's loader
//! (unsafe on untrusted files, impossible for another architecture) and its output depends
//! on the host's cache; parsing depends only on the files. 64-bit little-endian ELF only
//! (x86-64, aarch64) — what Basalt boots. `dlopen`ed libraries are invisible here by nature.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

/// What an executable or library needs from the dynamic loader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dynamic {
    /// `e_machine` (62 = x86-64, 183 = aarch64).
    pub machine: u16,
    /// The `PT_INTERP` path (executables only), e.g. `/lib64/ld-linux-x86-64.so.2`.
    pub interpreter: Option<String>,
    /// `DT_NEEDED` names, in order.
    pub needed: Vec<String>,
    /// `DT_RUNPATH` (or, if absent, `DT_RPATH`) directories, `:`-separated in the file.
    pub runpath: Vec<String>,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}
fn cstr_at(b: &[u8], off: usize) -> Option<String> {
    let rest = b.get(off..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// Parse the dynamic-linking needs of an ELF file. Pure; never panics on malformed input.
pub fn parse_dynamic(bytes: &[u8], path: &Path) -> Result<Dynamic> {
    let bad = |reason: &str| Error::ElfParse {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if bytes.get(..4) != Some(b"\x7fELF") {
        return Err(bad("not an ELF file"));
    }
    if bytes.get(4..6) != Some(&[2, 1]) {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    let machine = u16_at(bytes, 0x12).ok_or_else(|| bad("truncated header"))?;
    let phoff = u64_at(bytes, 0x20).ok_or_else(|| bad("truncated header"))?;
    let phentsize = u16_at(bytes, 0x36).ok_or_else(|| bad("truncated header"))?;
    let phnum = u16_at(bytes, 0x38).ok_or_else(|| bad("truncated header"))?;
    if phentsize < 56 {
        return Err(bad("program header entries are too small"));
    }
    // (type, offset, vaddr, filesz) of each program header.
    let mut headers = Vec::with_capacity(usize::from(phnum));
    for i in 0..u64::from(phnum) {
        let at = phoff
            .checked_add(i * u64::from(phentsize))
            .and_then(|a| usize::try_from(a).ok())
            .ok_or_else(|| bad("program header offset overflows"))?;
        let h = (|| {
            Some((
                u32_at(bytes, at)?,
                u64_at(bytes, at + 8)?,
                u64_at(bytes, at + 16)?,
                u64_at(bytes, at + 32)?,
            ))
        })()
        .ok_or_else(|| bad("program header outside the file"))?;
        headers.push(h);
    }
    let file_range = |off: u64, len: u64| -> Option<&[u8]> {
        let start = usize::try_from(off).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        bytes.get(start..end)
    };
    let mut dynamic = Dynamic {
        machine,
        ..Dynamic::default()
    };
    if let Some(&(_, off, _, len)) = headers.iter().find(|h| h.0 == PT_INTERP) {
        let raw = file_range(off, len).ok_or_else(|| bad("PT_INTERP outside the file"))?;
        dynamic.interpreter =
            Some(cstr_at(raw, 0).ok_or_else(|| bad("PT_INTERP is not a string"))?);
    }
    let Some(&(_, dyn_off, _, dyn_len)) = headers.iter().find(|h| h.0 == PT_DYNAMIC) else {
        return Ok(dynamic); // statically linked
    };
    let table = file_range(dyn_off, dyn_len).ok_or_else(|| bad("PT_DYNAMIC outside the file"))?;
    let mut strtab_vaddr = None;
    let (mut needed, mut runpath, mut rpath) = (Vec::new(), None, None);
    for entry in table.chunks_exact(16) {
        let (tag, val) = (u64_at(entry, 0).unwrap_or(0), u64_at(entry, 8).unwrap_or(0));
        match tag {
            DT_NULL => break,
            DT_STRTAB => strtab_vaddr = Some(val),
            DT_NEEDED => needed.push(val),
            DT_RUNPATH => runpath = Some(val),
            DT_RPATH => rpath = Some(val),
            _ => {}
        }
    }
    if needed.is_empty() && runpath.is_none() && rpath.is_none() {
        return Ok(dynamic);
    }
    let strtab_vaddr = strtab_vaddr.ok_or_else(|| bad("DT_NEEDED without DT_STRTAB"))?;
    // DT_STRTAB is a virtual address: map it through the PT_LOAD segment that holds it.
    let strtab_off = headers
        .iter()
        .filter(|h| h.0 == PT_LOAD)
        .find(|&&(_, _, vaddr, filesz)| strtab_vaddr >= vaddr && strtab_vaddr - vaddr < filesz)
        .and_then(|&(_, off, vaddr, _)| off.checked_add(strtab_vaddr - vaddr))
        .and_then(|o| usize::try_from(o).ok())
        .ok_or_else(|| bad("DT_STRTAB is in no loadable segment"))?;
    let string = |val: u64| {
        usize::try_from(val)
            .ok()
            .and_then(|v| strtab_off.checked_add(v))
            .and_then(|at| cstr_at(bytes, at))
            .ok_or_else(|| bad("dynamic string outside the file"))
    };
    for n in needed {
        dynamic.needed.push(string(n)?);
    }
    if let Some(p) = runpath.or(rpath) {
        dynamic.runpath = string(p)?
            .split(':')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
    }
    Ok(dynamic)
}

/// The standard library directories searched after `DT_RUNPATH`, as glibc's loader does on
/// Debian (multiarch first).
pub fn standard_library_dirs(machine: u16) -> Vec<PathBuf> {
    let triplet = match machine {
        EM_X86_64 => Some("x86_64-linux-gnu"),
        EM_AARCH64 => Some("aarch64-linux-gnu"),
        _ => None,
    };
    let mut dirs = Vec::new();
    if let Some(t) = triplet {
        dirs.push(PathBuf::from(format!("/lib/{t}")));
        dirs.push(PathBuf::from(format!("/usr/lib/{t}")));
    }
    for d in ["/lib64", "/usr/lib64", "/lib", "/usr/lib"] {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

/// One file of a closure: where it goes in the initramfs (an absolute path) and the host file
/// its bytes come from (the same path; symlinks are followed when reading).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosureFile {
    /// The absolute path, on the host and in the initramfs.
    pub path: PathBuf,
    /// What it is.
    pub role: Role,
}

/// Why a file is in a closure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// An executable that was asked for.
    Binary,
    /// The ELF interpreter (the dynamic loader).
    Interpreter,
    /// A shared library.
    Library,
}

/// The executables plus their interpreters and libraries, recursively, sorted by path.
/// `root` prefixes every host path (`/` for the host itself; tests use a fake tree); the
/// paths in the result are the absolute paths inside that root.
pub fn closure(root: &Path, binaries: &[PathBuf]) -> Result<Vec<ClosureFile>> {
    let mut found: BTreeMap<PathBuf, Role> = BTreeMap::new();
    // File names of the interpreters seen: the loader is already in memory under its soname,
    // so libc's `DT_NEEDED ld-linux-x86-64.so.2` is satisfied by it, not by a second copy.
    let mut interpreters: BTreeSet<String> = BTreeSet::new();
    let mut queue: VecDeque<(PathBuf, Role)> =
        binaries.iter().map(|b| (b.clone(), Role::Binary)).collect();
    while let Some((path, role)) = queue.pop_front() {
        if !path.is_absolute() {
            return Err(Error::ElfParse {
                path,
                reason: "not an absolute path".into(),
            });
        }
        // `$ORIGIN/../lib` etc.: resolve `..` lexically, as the loader does for the string.
        let path = lexical(&path);
        if found.contains_key(&path) {
            continue;
        }
        let host = inside(root, &path);
        let bytes = std::fs::read(&host).map_err(|source| Error::ReadInput {
            path: host.clone(),
            source,
        })?;
        let d = parse_dynamic(&bytes, &host)?;
        found.insert(path.clone(), role);
        if let Some(interp) = d.interpreter {
            let interp = PathBuf::from(interp);
            if let Some(name) = interp.file_name() {
                interpreters.insert(name.to_string_lossy().into_owned());
            }
            queue.push_back((interp, Role::Interpreter));
        }
        let origin = path.parent().unwrap_or(Path::new("/"));
        let mut dirs: Vec<PathBuf> = d
            .runpath
            .iter()
            .map(|r| PathBuf::from(r.replace("$ORIGIN", &origin.to_string_lossy())))
            .collect();
        dirs.extend(standard_library_dirs(d.machine));
        for name in d.needed {
            if interpreters.contains(&name) {
                continue;
            }
            let lib = if name.contains('/') {
                Some(PathBuf::from(&name))
            } else {
                dirs.iter()
                    .map(|dir| dir.join(&name))
                    .find(|p| inside(root, p).is_file())
            };
            match lib {
                Some(lib) => queue.push_back((lib, Role::Library)),
                None => {
                    return Err(Error::ElfLibraryNotFound {
                        binary: path.clone(),
                        library: name,
                        searched: dirs.clone(),
                    })
                }
            }
        }
    }
    Ok(found
        .into_iter()
        .map(|(path, role)| ClosureFile { path, role })
        .collect())
}

/// An absolute path with `.` and `..` resolved without looking at the file system.
fn lexical(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// `root` + an absolute `path`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal ELF64 LE file: one PT_LOAD mapping the whole file at vaddr 0x400000,
    /// optionally PT_INTERP, and a PT_DYNAMIC with DT_NEEDED/DT_RUNPATH.
    pub(crate) fn tiny_elf(
        interp: Option<&str>,
        needed: &[&str],
        runpath: Option<&str>,
    ) -> Vec<u8> {
        const BASE: u64 = 0x40_0000;
        let mut strtab = vec![0u8];
        let mut add = |s: &str| {
            let at = strtab.len() as u64;
            strtab.extend_from_slice(s.as_bytes());
            strtab.push(0);
            at
        };
        let needed_at: Vec<u64> = needed.iter().map(|n| add(n)).collect();
        let runpath_at = runpath.map(&mut add);
        let interp_bytes = interp.map(|i| [i.as_bytes(), &[0]].concat());
        let phnum = 3u64;
        let ph_off = 64u64;
        let interp_off = ph_off + phnum * 56;
        let interp_len = interp_bytes.as_ref().map_or(0, |b| b.len() as u64);
        let strtab_off = interp_off + interp_len;
        let dyn_off = (strtab_off + strtab.len() as u64 + 7) & !7;
        let mut dynamic: Vec<(u64, u64)> = vec![(DT_STRTAB, BASE + strtab_off)];
        dynamic.extend(needed_at.iter().map(|&a| (DT_NEEDED, a)));
        if let Some(r) = runpath_at {
            dynamic.push((DT_RUNPATH, r));
        }
        dynamic.push((DT_NULL, 0));
        let total = dyn_off + dynamic.len() as u64 * 16;

        let mut b = vec![0u8; total as usize];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[0x10..0x12].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN
        b[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&ph_off.to_le_bytes());
        b[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&(phnum as u16).to_le_bytes());
        let mut ph = |i: u64, ty: u32, off: u64, len: u64| {
            let at = (ph_off + i * 56) as usize;
            b[at..at + 4].copy_from_slice(&ty.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            b[at + 16..at + 24].copy_from_slice(&(BASE + off).to_le_bytes());
            b[at + 32..at + 40].copy_from_slice(&len.to_le_bytes());
            b[at + 40..at + 48].copy_from_slice(&len.to_le_bytes());
        };
        ph(0, PT_LOAD, 0, total);
        ph(1, PT_DYNAMIC, dyn_off, dynamic.len() as u64 * 16);
        // Without an interpreter the third header is a PT_NULL (type 0).
        ph(
            2,
            if interp.is_some() { PT_INTERP } else { 0 },
            interp_off,
            interp_len,
        );
        if let Some(i) = &interp_bytes {
            b[interp_off as usize..(interp_off + interp_len) as usize].copy_from_slice(i);
        }
        b[strtab_off as usize..strtab_off as usize + strtab.len()].copy_from_slice(&strtab);
        for (k, (tag, val)) in dynamic.iter().enumerate() {
            let at = dyn_off as usize + k * 16;
            b[at..at + 8].copy_from_slice(&tag.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&val.to_le_bytes());
        }
        b
    }

    #[test]
    fn parses_interpreter_needed_and_runpath() {
        let elf = tiny_elf(
            Some("/lib64/ld-linux-x86-64.so.2"),
            &["libfoo.so.1", "libc.so.6"],
            Some("$ORIGIN/../lib:/opt/x"),
        );
        let d = parse_dynamic(&elf, Path::new("t")).unwrap();
        assert_eq!(d.machine, EM_X86_64);
        assert_eq!(
            d.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert_eq!(d.needed, ["libfoo.so.1", "libc.so.6"]);
        assert_eq!(d.runpath, ["$ORIGIN/../lib", "/opt/x"]);
    }

    #[test]
    fn refuses_non_elf_and_32_bit() {
        assert!(parse_dynamic(b"#!/bin/sh\n", Path::new("s")).is_err());
        let mut elf = tiny_elf(None, &[], None);
        elf[4] = 1;
        assert!(parse_dynamic(&elf, Path::new("e")).is_err());
    }

    #[test]
    fn closure_follows_libraries_recursively_and_names_what_is_missing() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let w = |p: &str, b: Vec<u8>| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b).unwrap();
        };
        w(
            "sbin/tool",
            tiny_elf(Some("/lib64/ld.so"), &["liba.so"], Some("$ORIGIN/../opt")),
        );
        w("lib64/ld.so", tiny_elf(None, &[], None));
        w("opt/liba.so", tiny_elf(None, &["libc.so.6"], None));
        w(
            "usr/lib/x86_64-linux-gnu/libc.so.6",
            tiny_elf(None, &["ld.so"], None),
        );
        let c = closure(root, &[PathBuf::from("/sbin/tool")]).unwrap();
        let got: Vec<(&Path, Role)> = c.iter().map(|f| (f.path.as_path(), f.role)).collect();
        assert_eq!(
            got,
            [
                (Path::new("/lib64/ld.so"), Role::Interpreter),
                (Path::new("/opt/liba.so"), Role::Library),
                (Path::new("/sbin/tool"), Role::Binary),
                (
                    Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6"),
                    Role::Library
                ),
            ]
        );
        std::fs::remove_file(root.join("opt/liba.so")).unwrap();
        let err = closure(root, &[PathBuf::from("/sbin/tool")]).unwrap_err();
        assert!(
            matches!(&err, Error::ElfLibraryNotFound { library, .. } if library == "liba.so"),
            "{err}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn never_panics_on_mutated_elf(flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..8)) {
            let mut elf = tiny_elf(Some("/lib64/ld.so"), &["liba.so", "libc.so.6"], Some("/x"));
            for (at, v) in flips {
                let n = elf.len();
                elf[at % n] = v;
            }
            let _ = parse_dynamic(&elf, Path::new("fuzz"));
        }
    }
}
