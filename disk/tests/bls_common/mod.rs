//! Shared helpers of the BLS tests: boot targets with content derived from the version, and
//! an independent reading of systemd-boot's selection written from its documentation and
//! source comments (not from `basalt_disk::bls`).

#![allow(dead_code)]

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use basalt_disk::BootTarget;

/// Kernel bytes for `version` (distinct per version, a few KiB).
pub fn kernel_bytes(version: &str) -> Vec<u8> {
    format!("KERNEL {version}\n").repeat(300).into_bytes()
}

/// Initrd bytes for `version`.
pub fn initrd_bytes(version: &str) -> Vec<u8> {
    format!("INITRD {version}\n").repeat(100).into_bytes()
}

/// A target for `version` whose kernel and initrd are written under `host`.
pub fn target(host: &Path, version: &str) -> BootTarget {
    let dir = host.join(format!("src-{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    let (k, i) = (dir.join("vmlinuz"), dir.join("initrd"));
    std::fs::write(&k, kernel_bytes(version)).unwrap();
    std::fs::write(&i, initrd_bytes(version)).unwrap();
    let hex: String = version.bytes().map(|b| format!("{b:02x}")).collect();
    BootTarget {
        version: version.to_string(),
        usr_hash: format!("{hex:0>64}"),
        kernel: Some(k),
        initrd: Some(i),
        options: "console=ttyS0".into(),
    }
}

/// Recursively copy a directory tree (snapshots of a directory ESP).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Every file under `root` with its content, sorted (to compare ESP states).
pub fn snapshot(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                out.push((
                    e.path().strip_prefix(root).unwrap().to_path_buf(),
                    b"<dir>".to_vec(),
                ));
                walk(root, &e.path(), out);
            } else {
                out.push((
                    e.path().strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(e.path()).unwrap(),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

// ---- The independent model of systemd-boot 252's choice ------------------------------------

/// One loadable entry as the model sees it.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    pub file: String,
    pub sort_key: Option<String>,
    pub version: Option<String>,
    /// `None`: not counting. `Some((left, done))`.
    pub tries: Option<(u64, u64)>,
    /// From `basalt.slot=`.
    pub slot: Option<char>,
}

/// Read `loader/entries` of a directory ESP the way the Boot Loader Specification and
/// systemd-boot's comments describe it: `*.conf` files, not hidden, not `auto-*`, whose
/// `linux` file exists.
pub fn model_entries(esp: &Path) -> Vec<ModelEntry> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(esp.join("loader/entries")) else {
        return out;
    };
    for e in rd {
        let e = e.unwrap();
        let file = e.file_name().to_string_lossy().into_owned();
        if file.starts_with('.')
            || file.starts_with("auto-")
            || !file.to_lowercase().ends_with(".conf")
        {
            continue;
        }
        let text = String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned();
        let mut m = ModelEntry {
            file: file.clone(),
            sort_key: None,
            version: None,
            tries: model_tries(&file[..file.len() - 5]),
            slot: None,
        };
        let mut linux = None;
        for line in text.lines() {
            let line = line.trim();
            let Some((k, v)) = line.split_once(' ') else {
                continue;
            };
            let v = v.trim();
            match k {
                "sort-key" => m.sort_key = Some(v.into()),
                "version" => m.version = Some(v.into()),
                "linux" => linux = Some(v.trim_start_matches('/').to_string()),
                "options" => {
                    for o in v.split_whitespace() {
                        if let Some(s) = o.strip_prefix("basalt.slot=") {
                            m.slot = s.chars().next();
                        }
                    }
                }
                _ => {}
            }
        }
        if linux.is_some_and(|l| esp.join(l).is_file()) {
            out.push(m);
        }
    }
    out
}

/// `+LEFT[-DONE]` at the end of a stem, per the BLS boot-counting text.
fn model_tries(stem: &str) -> Option<(u64, u64)> {
    let (_, counter) = stem.rsplit_once('+')?;
    let (left, done) = match counter.split_once('-') {
        Some((l, d)) => (l, d),
        None => (counter, "0"),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(left) || !digits(done) {
        return None;
    }
    Some((left.parse().ok()?, done.parse().ok()?))
}

/// systemd's version comparison, written as a segment tokenizer (different shape from the
/// crate's pointer walk, same documented rules).
pub fn vercmp(a: &str, b: &str) -> Ordering {
    if a.is_empty() || b.is_empty() {
        return a.cmp(b);
    }
    #[derive(Debug, PartialEq)]
    enum Tok {
        Prefix(u8),
        Num(String),
        Alpha(String),
    }
    fn toks(s: &str) -> Vec<Tok> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if b"~-^.".contains(&c) {
                out.push(Tok::Prefix(c));
                i += 1;
            } else if c.is_ascii_digit() {
                let st = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                out.push(Tok::Num(s[st..i].trim_start_matches('0').to_string()));
            } else if c.is_ascii_alphabetic() {
                let st = i;
                while i < b.len() && b[i].is_ascii_alphabetic() {
                    i += 1;
                }
                out.push(Tok::Alpha(s[st..i].to_string()));
            } else {
                i += 1; // dropped
            }
        }
        out
    }
    let (ta, tb) = (toks(a), toks(b));
    let (mut i, mut j) = (0, 0);
    loop {
        let pa = |i: usize, p: u8| matches!(ta.get(i), Some(Tok::Prefix(x)) if *x == p);
        let pb = |j: usize, p: u8| matches!(tb.get(j), Some(Tok::Prefix(x)) if *x == p);
        if pa(i, b'~') || pb(j, b'~') {
            match (pa(i, b'~'), pb(j, b'~')) {
                (true, false) => return Ordering::Less,
                (false, true) => return Ordering::Greater,
                _ => {
                    i += 1;
                    j += 1;
                }
            }
        }
        match (ta.get(i), tb.get(j)) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            _ => {}
        }
        for p in [b'-', b'^', b'.'] {
            if pa(i, p) || pb(j, p) {
                match (pa(i, p), pb(j, p)) {
                    (true, false) => return Ordering::Less,
                    (false, true) => return Ordering::Greater,
                    _ => {
                        i += 1;
                        j += 1;
                    }
                }
            }
        }
        let (x, y) = (ta.get(i), tb.get(j));
        match (x, y) {
            (Some(Tok::Num(p)), Some(Tok::Num(q))) => {
                let r = p.len().cmp(&q.len()).then(p.cmp(q));
                if r != Ordering::Equal {
                    return r;
                }
            }
            (Some(Tok::Num(_)), _) => return Ordering::Greater,
            (_, Some(Tok::Num(_))) => return Ordering::Less,
            (Some(Tok::Alpha(p)), Some(Tok::Alpha(q))) => {
                let r = p.cmp(q);
                if r != Ordering::Equal {
                    return r;
                }
            }
            (Some(Tok::Alpha(_)), _) => return Ordering::Greater,
            (_, Some(Tok::Alpha(_))) => return Ordering::Less,
            _ => {}
        }
        i += 1;
        j += 1;
    }
}

/// The entry systemd-boot 252 boots with `timeout 0` and no `default`: bad (0 left) last,
/// then sort-key (with before without), version descending, id descending, more tries left.
pub fn model_choice(entries: &[ModelEntry]) -> Option<ModelEntry> {
    let mut v = entries.to_vec();
    v.sort_by(|a, b| {
        let bad = |e: &ModelEntry| matches!(e.tries, Some((0, _)));
        bad(a)
            .cmp(&bad(b))
            .then_with(|| b.sort_key.is_some().cmp(&a.sort_key.is_some()))
            .then_with(|| match (&a.sort_key, &b.sort_key) {
                (Some(x), Some(y)) => x.cmp(y).then_with(|| match (&a.version, &b.version) {
                    (Some(p), Some(q)) => vercmp(q, p),
                    _ => b.version.is_some().cmp(&a.version.is_some()),
                }),
                _ => Ordering::Equal,
            })
            .then_with(|| vercmp(&b.file.to_lowercase(), &a.file.to_lowercase()))
            .then_with(|| match (a.tries, b.tries) {
                (Some((la, da)), Some((lb, db))) => lb.cmp(&la).then(da.cmp(&db)),
                _ => Ordering::Equal,
            })
    });
    v.into_iter().next()
}

/// A minimal PE32+ image with `sections` (name, content) stored back to back after the
/// headers: what systemd-stub's section reader and `basalt_identity::pe` read.
pub fn pe(sections: &[(&str, &[u8])]) -> Vec<u8> {
    let pe_at = 0x80usize;
    let opt_size = 240usize;
    let table = pe_at + 24 + opt_size;
    let data_at = (table + sections.len() * 40).div_ceil(512) * 512;
    let mut out = vec![0u8; data_at];
    out[..2].copy_from_slice(b"MZ");
    out[0x3c..0x40].copy_from_slice(&(pe_at as u32).to_le_bytes());
    out[pe_at..pe_at + 4].copy_from_slice(b"PE\0\0");
    out[pe_at + 6..pe_at + 8].copy_from_slice(&(sections.len() as u16).to_le_bytes());
    out[pe_at + 20..pe_at + 22].copy_from_slice(&(opt_size as u16).to_le_bytes());
    out[pe_at + 24..pe_at + 26].copy_from_slice(&0x20bu16.to_le_bytes());
    for (i, (name, data)) in sections.iter().enumerate() {
        let h = table + i * 40;
        let raw = data.len().div_ceil(512) * 512;
        let at = out.len();
        out[h..h + name.len()].copy_from_slice(name.as_bytes());
        out[h + 8..h + 12].copy_from_slice(&(data.len() as u32).to_le_bytes());
        out[h + 16..h + 20].copy_from_slice(&(raw as u32).to_le_bytes());
        out[h + 20..h + 24].copy_from_slice(&(at as u32).to_le_bytes());
        out.extend_from_slice(data);
        out.resize(at + raw, 0);
    }
    out
}

/// The usr hash the test targets of `version` carry.
pub fn usr_hash_of(version: &str) -> String {
    let hex: String = version.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{hex:0>64}")
}

/// UKI bytes for `version`: a PE whose `.cmdline` is `cmdline` and whose `.linux` is the
/// version's kernel bytes.
pub fn uki_bytes_with(version: &str, cmdline: &str) -> Vec<u8> {
    pe(&[
        (
            ".osrel",
            format!("ID=basalt\nVERSION_ID={version}\n").as_bytes(),
        ),
        (".cmdline", cmdline.as_bytes()),
        (".linux", &kernel_bytes(version)),
    ])
}

/// The UKI of `version`: its `.cmdline` names the version's usr hash.
pub fn uki_bytes(version: &str) -> Vec<u8> {
    uki_bytes_with(
        version,
        &format!("console=ttyS0 usrhash={}", usr_hash_of(version)),
    )
}

/// A UKI target for `version` whose file (from [`uki_bytes`]) is written under `host`.
pub fn uki_target(host: &Path, version: &str) -> basalt_disk::UkiTarget {
    let dir = host.join(format!("src-{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    let uki = dir.join("basalt.efi");
    std::fs::write(&uki, uki_bytes(version)).unwrap();
    basalt_disk::UkiTarget {
        version: version.to_string(),
        usr_hash: usr_hash_of(version),
        uki,
    }
}
