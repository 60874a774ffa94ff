//! Unified kernel images (UKI): systemd-stub (`linuxx64.efi.stub`, package
//! `systemd-boot-efi`) with the kernel (`.linux`), the initramfs (`.initrd`), the kernel
//! command line including `usrhash=` (`.cmdline`) and os-release (`.osrel`) added as PE
//! sections — one file that Secure Boot verifies as a whole, so neither the initramfs (which
//! holds basalt-init, its trust root and boot policy) nor the command line can be swapped
//! without breaking the signature. systemd-stub ignores a command line passed by the boot
//! loader when Secure Boot is on and the image has a `.cmdline` section.
//!
//! Built in-process rather than with `objcopy` (the method systemd 252's documentation
//! gives) because objcopy stamps the build time into the PE header and leaves gaps between
//! sections that `sbsign` warns about: [`assemble`] writes the same bytes for the same
//! inputs, every section's raw data aligned to the stub's file alignment with no gap, the
//! timestamp and checksum zero (the signer fills the checksum). Signing is `sbsign`
//! ([`sign`]); `objdump` and `sbverify` are the peers in the tests.
//!
//! Layout added after the stub's own sections (virtual addresses aligned to 4 KiB, above
//! the stub's; raw data appended where the stub's last section ends — trailing bytes of the
//! stub file that belong to no section are dropped, as objcopy does):
//!
//! ```text
//! stub headers + .text .reloc .data … .sdmagic | .osrel | .cmdline | .linux | .initrd
//! ```

use std::path::Path;

use crate::tool::{Tool, ToolError};

/// systemd-stub as Debian ships it (package `systemd-boot-efi`).
pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// `sbsign` (package `sbsigntool`).
pub const SBSIGN: Tool = Tool::new("sbsign", "sbsigntool");
/// `sbverify` (package `sbsigntool`).
pub const SBVERIFY: Tool = Tool::new("sbverify", "sbsigntool");

/// Alignment of the added sections' virtual addresses.
const VA_ALIGN: u32 = 0x1000;
/// `IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ`.
const DATA_READ: u32 = 0x4000_0040;
const PE32_PLUS: u16 = 0x20b;
const SECTION_HEADER: usize = 40;

/// Building or signing a UKI failed.
#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    /// The stub is not a PE32+ image we can extend.
    #[error("{path}: not a usable PE32+ EFI stub: {reason}")]
    Stub {
        /// The stub file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A section cannot be added.
    #[error("UKI section {name}: {reason}")]
    Section {
        /// The section name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Reading an input or writing the output failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `sbsign` / `sbverify` failed or is missing.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// A release directory's `build.json` is unusable for a UKI.
    #[error("release {path}: {reason}")]
    Release {
        /// The `build.json`.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
}

/// One section to add: a name of at most 8 bytes and its content.
#[derive(Debug, Clone, Copy)]
pub struct Section<'a> {
    /// `.osrel`, `.cmdline`, `.linux`, `.initrd`, …
    pub name: &'a str,
    /// The bytes.
    pub data: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn align(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// The stub (`stub_name` only names it in errors) with `sections` appended. Pure and
/// deterministic.
pub fn assemble(stub: &[u8], stub_name: &str, sections: &[Section]) -> Result<Vec<u8>, UkiError> {
    let bad = |reason: &str| UkiError::Stub {
        path: stub_name.to_owned(),
        reason: reason.to_owned(),
    };
    let pe = u32_at(stub, 0x3c).ok_or_else(|| bad("no DOS header"))? as usize;
    if stub.get(..2) != Some(b"MZ") || stub.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(bad("no MZ/PE signature"));
    }
    let coff = pe + 4;
    let nsec = u16_at(stub, coff + 2).ok_or_else(|| bad("truncated COFF header"))? as usize;
    let opt_size = u16_at(stub, coff + 16).ok_or_else(|| bad("truncated COFF header"))? as usize;
    let opt = coff + 20;
    if u16_at(stub, opt) != Some(PE32_PLUS) {
        return Err(bad("not PE32+"));
    }
    let field = |at: usize| u32_at(stub, opt + at).ok_or_else(|| bad("truncated optional header"));
    let section_align = field(32)?;
    let file_align = field(36)?;
    let size_of_headers = field(60)? as usize;
    if section_align == 0 || file_align == 0 || !file_align.is_power_of_two() {
        return Err(bad("zero or odd alignment"));
    }
    // The certificate table (data directory 4) must be empty: a signed stub would be
    // invalidated by the new sections, and its signature data would sit in the way.
    let cert_dir = opt + 112 + 4 * 8;
    if field(108)? > 4 && (u32_at(stub, cert_dir + 4) != Some(0)) {
        return Err(bad(
            "already signed (certificate table present); use the unsigned stub",
        ));
    }
    let table = opt + opt_size;
    let table_end = table + nsec * SECTION_HEADER;
    let new_end = table_end + sections.len() * SECTION_HEADER;
    let (mut va_end, mut raw_end) = (0u64, 0u64);
    for i in 0..nsec {
        let s = table + i * SECTION_HEADER;
        let vsize = u32_at(stub, s + 8).ok_or_else(|| bad("truncated section table"))?;
        let va = u32_at(stub, s + 12).ok_or_else(|| bad("truncated section table"))?;
        let raw_size = u32_at(stub, s + 16).ok_or_else(|| bad("truncated section table"))?;
        let raw_ptr = u32_at(stub, s + 20).ok_or_else(|| bad("truncated section table"))?;
        va_end = va_end.max(u64::from(va) + u64::from(vsize.max(raw_size)));
        raw_end = raw_end.max(u64::from(raw_ptr) + u64::from(raw_size));
        if raw_size > 0 && (raw_ptr as usize) < new_end {
            return Err(bad("no room in the headers for more section headers"));
        }
    }
    if new_end > size_of_headers || raw_end > stub.len() as u64 {
        return Err(bad(
            "no room for more section headers, or sections beyond the file",
        ));
    }
    let mut out = stub[..raw_end as usize].to_vec();
    let mut va = align(va_end, u64::from(VA_ALIGN.max(section_align)));
    let mut init_data = u64::from(field(8)?);
    for (i, sec) in sections.iter().enumerate() {
        let sec_err = |reason: &str| UkiError::Section {
            name: sec.name.to_owned(),
            reason: reason.to_owned(),
        };
        if sec.name.is_empty() || sec.name.len() > 8 {
            return Err(sec_err("name must be 1 to 8 bytes"));
        }
        let raw_ptr = align(out.len() as u64, u64::from(file_align));
        let raw_size = align(sec.data.len() as u64, u64::from(file_align));
        let fits = |v: u64| u32::try_from(v).map_err(|_| sec_err("image larger than 4 GiB"));
        let h = table_end + i * SECTION_HEADER;
        let mut name = [0u8; 8];
        name[..sec.name.len()].copy_from_slice(sec.name.as_bytes());
        out[h..h + 8].copy_from_slice(&name);
        put_u32(&mut out, h + 8, fits(sec.data.len() as u64)?);
        put_u32(&mut out, h + 12, fits(va)?);
        put_u32(&mut out, h + 16, fits(raw_size)?);
        put_u32(&mut out, h + 20, fits(raw_ptr)?);
        out[h + 24..h + 36].fill(0); // no relocations, no line numbers
        put_u32(&mut out, h + 36, DATA_READ);
        out.resize(raw_ptr as usize, 0);
        out.extend_from_slice(sec.data);
        out.resize((raw_ptr + raw_size) as usize, 0);
        va = align(
            va + sec.data.len() as u64,
            u64::from(VA_ALIGN.max(section_align)),
        );
        init_data += raw_size;
    }
    let fits = |v: u64, what: &str| {
        u32::try_from(v).map_err(|_| UkiError::Section {
            name: what.to_owned(),
            reason: "image larger than 4 GiB".into(),
        })
    };
    put_u16(&mut out, coff + 2, (nsec + sections.len()) as u16);
    put_u32(&mut out, coff + 4, 0); // TimeDateStamp: reproducible
    put_u32(&mut out, opt + 8, fits(init_data, "SizeOfInitializedData")?);
    put_u32(&mut out, opt + 56, fits(va, "SizeOfImage")?);
    put_u32(&mut out, opt + 64, 0); // CheckSum: the signer recomputes it
    Ok(out)
}

/// What goes into a Basalt UKI.
#[derive(Debug, Clone)]
pub struct UkiInputs<'a> {
    /// The kernel (bzImage with its EFI stub).
    pub kernel: &'a Path,
    /// The initramfs.
    pub initrd: &'a Path,
    /// The whole kernel command line, `usrhash=` included.
    pub cmdline: &'a str,
    /// os-release text (systemd-boot shows `PRETTY_NAME`, sorts by `ID`/`VERSION_ID`).
    pub os_release: &'a str,
}

fn read(path: &Path) -> Result<Vec<u8>, UkiError> {
    std::fs::read(path).map_err(|source| UkiError::Io {
        op: "read",
        path: path.to_owned(),
        source,
    })
}

/// Build the (unsigned) UKI of `inputs` on systemd-stub at `stub` into `out`.
pub fn build(stub: &Path, inputs: &UkiInputs, out: &Path) -> Result<(), UkiError> {
    let stub_bytes = read(stub)?;
    let kernel = read(inputs.kernel)?;
    let initrd = read(inputs.initrd)?;
    let bytes = assemble(
        &stub_bytes,
        &stub.display().to_string(),
        &[
            Section {
                name: ".osrel",
                data: inputs.os_release.as_bytes(),
            },
            Section {
                name: ".cmdline",
                data: inputs.cmdline.as_bytes(),
            },
            Section {
                name: ".linux",
                data: &kernel,
            },
            Section {
                name: ".initrd",
                data: &initrd,
            },
        ],
    )?;
    std::fs::write(out, bytes).map_err(|source| UkiError::Io {
        op: "write",
        path: out.to_owned(),
        source,
    })
}

/// The `.osrel` of a Basalt UKI: systemd-boot shows `PRETTY_NAME` and orders type #2
/// entries by `ID` and then `VERSION_ID` (higher first).
pub fn os_release(os: &str, version: &str) -> String {
    format!("NAME=Basalt\nID={os}\nVERSION_ID={version}\nPRETTY_NAME=\"Basalt {version}\"\n")
}

/// The command line a release's UKI carries: the image's (`build.json`'s `cmdline`), then
/// `usrhash=` of its own `/usr`. No `basalt.slot=`: the UKI is the same for either slot
/// (basalt-init finds the slot by the partition UUIDs the hash names).
pub fn release_cmdline(facts: &super::image::BuildFacts) -> String {
    let base = facts.cmdline.trim();
    if base.is_empty() {
        format!("usrhash={}", facts.root_hash)
    } else {
        format!("{base} usrhash={}", facts.root_hash)
    }
}

/// The file name of `os` `version`'s UKI without a boot counter, as systemd-boot finds it
/// under `EFI/Linux/` (the stager adds `+<tries>`).
pub fn release_uki_name(os: &str, version: &str) -> String {
    format!("{os}-{version}.efi")
}

/// Build the UKI of the release in `release` (a `basalt image build` output folder: its
/// `vmlinuz`, `initrd.img` and `build.json`) on systemd-stub `stub`, signed with
/// `signer = (db key, db certificate)` when given (and checked with `sbverify` right away),
/// into `release/<os>-<version>.efi` ([`release_uki_name`]); returns that path. The facts it
/// embeds are checked first: the root hash must be one (`basalt_identity::RootHash`), the OS
/// name and version must make a plain file name.
pub fn build_release(
    release: &Path,
    stub: &Path,
    signer: Option<(&Path, &Path)>,
) -> Result<std::path::PathBuf, UkiError> {
    use super::image::{BuildFacts, BUILD_JSON, INITRD_IMG, VMLINUZ};
    let facts_path = release.join(BUILD_JSON);
    let bad = |reason: String| UkiError::Release {
        path: facts_path.clone(),
        reason,
    };
    let facts: BuildFacts =
        serde_json::from_slice(&read(&facts_path)?).map_err(|e| bad(e.to_string()))?;
    basalt_identity::RootHash::parse(&facts.root_hash).map_err(|e| bad(e.to_string()))?;
    semver::Version::parse(&facts.version)
        .map_err(|e| bad(format!("version {:?}: {e}", facts.version)))?;
    let name_ok = !facts.os.is_empty()
        && facts.os.len() <= 64
        && facts
            .os
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !name_ok || facts.os.starts_with('.') {
        return Err(bad(format!(
            "os {:?} must be 1-64 characters of [a-z0-9._-]",
            facts.os
        )));
    }
    if facts.cmdline.contains(['\n', '\0']) {
        return Err(bad("the command line holds a newline or NUL".into()));
    }
    let out = release.join(release_uki_name(&facts.os, &facts.version));
    let cmdline = release_cmdline(&facts);
    let os_release = os_release(&facts.os, &facts.version);
    let inputs = UkiInputs {
        kernel: &release.join(VMLINUZ),
        initrd: &release.join(INITRD_IMG),
        cmdline: &cmdline,
        os_release: &os_release,
    };
    match signer {
        None => build(stub, &inputs, &out)?,
        Some((key, cert)) => {
            let unsigned = out.with_extension("efi.unsigned");
            build(stub, &inputs, &unsigned)?;
            let signed = sign(&unsigned, key, cert, &out).and_then(|()| verify(&out, cert));
            let _ = std::fs::remove_file(&unsigned);
            if let Err(e) = signed {
                let _ = std::fs::remove_file(&out);
                return Err(e);
            }
        }
    }
    Ok(out)
}

/// Make the ESP of the release disk image `disk` (slot A holding the release) boot under
/// Secure Boot: systemd-boot from `systemd_boot` signed with `signer` at
/// `EFI/BOOT/BOOTX64.EFI`, and slot A's kernel + initrd entry replaced by the release's
/// signed UKI `uki` (a type #1 `efi` entry, blessed, through the same BLS backend the updater
/// stages with: `basalt_disk::BootControl::stage_uki`). `usr_hash` is slot A's root hash, the
/// one the UKI's command line must name.
pub fn secure_boot_disk(
    disk: &Path,
    uki: &Path,
    version: &str,
    usr_hash: &str,
    signer: (&Path, &Path),
    systemd_boot: &Path,
) -> Result<(), UkiError> {
    use basalt_disk::{BlsBackend, BootControl, Esp, FatImageEsp, Inventory, Slot, UkiTarget};
    let bad = |e: basalt_disk::Error| UkiError::Release {
        path: disk.to_owned(),
        reason: e.to_string(),
    };
    let signed = disk.with_extension("systemd-boot.signed.efi");
    let signed_bytes = sign(systemd_boot, signer.0, signer.1, &signed)
        .and_then(|()| verify(&signed, signer.1))
        .and_then(|()| read(&signed));
    let _ = std::fs::remove_file(&signed);
    let signed_bytes = signed_bytes?;
    let inv = Inventory::read_path(disk, None).map_err(bad)?;
    let esp = FatImageEsp::open(disk, inv.esp.offset, inv.esp.size).map_err(bad)?;
    let mut bls = BlsBackend::new(esp);
    let target = UkiTarget {
        version: version.to_owned(),
        usr_hash: usr_hash.to_owned(),
        uki: uki.to_owned(),
    };
    bls.stage_uki(Slot::A, &target, 1).map_err(bad)?;
    bls.mark_good(Slot::A).map_err(bad)?;
    bls.esp_mut()
        .write_atomic(basalt_disk::esp::DEFAULT_LOADER_PATH, &signed_bytes)
        .map_err(bad)
}

/// Sign the EFI binary `input` for Secure Boot with `key` (PEM, unencrypted) and `cert`
/// (PEM, the db certificate), writing `output` (`sbsign`).
pub fn sign(input: &Path, key: &Path, cert: &Path, output: &Path) -> Result<(), UkiError> {
    let mut cmd = SBSIGN.command()?;
    cmd.arg("--key")
        .arg(key)
        .arg("--cert")
        .arg(cert)
        .arg("--output")
        .arg(output)
        .arg(input);
    SBSIGN.run(&mut cmd)?;
    Ok(())
}

/// Check the Secure Boot signature of `file` against `cert` (`sbverify`).
pub fn verify(file: &Path, cert: &Path) -> Result<(), UkiError> {
    let mut cmd = SBVERIFY.command()?;
    cmd.arg("--cert").arg(cert).arg(file);
    SBVERIFY.run(&mut cmd)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stub() -> Vec<u8> {
        std::fs::read(STUB)
            .unwrap_or_else(|e| panic!("{STUB}: {e} (apt-get install systemd-boot-efi)"))
    }

    fn sections_of(pe: &[u8]) -> Vec<(String, u32, u32, u32, u32)> {
        let e = u32_at(pe, 0x3c).unwrap() as usize;
        let n = u16_at(pe, e + 6).unwrap() as usize;
        let table = e + 24 + u16_at(pe, e + 20).unwrap() as usize;
        (0..n)
            .map(|i| {
                let s = table + i * 40;
                let name = String::from_utf8_lossy(&pe[s..s + 8])
                    .trim_end_matches('\0')
                    .to_owned();
                (
                    name,
                    u32_at(pe, s + 8).unwrap(),
                    u32_at(pe, s + 12).unwrap(),
                    u32_at(pe, s + 16).unwrap(),
                    u32_at(pe, s + 20).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn sections_are_appended_aligned_without_gaps_and_reproducibly() {
        let stub = stub();
        let kernel = vec![0x4b; 100_001];
        let secs = [
            Section {
                name: ".osrel",
                data: b"ID=basalt\n",
            },
            Section {
                name: ".cmdline",
                data: b"usrhash=ab",
            },
            Section {
                name: ".linux",
                data: &kernel,
            },
        ];
        let a = assemble(&stub, "stub", &secs).unwrap();
        assert_eq!(a, assemble(&stub, "stub", &secs).unwrap());
        let all = sections_of(&a);
        let added = &all[all.len() - 3..];
        assert_eq!(added[0].0, ".osrel");
        assert_eq!(added[2].0, ".linux");
        for w in all.windows(2) {
            // raw data back to back (no gap), virtual addresses increasing
            assert_eq!(w[0].4 + w[0].3, w[1].4, "{w:?}");
            assert!(w[1].2 >= w[0].2 + w[0].1, "{w:?}");
        }
        let (_, vsize, va, raw, ptr) = added[2].clone();
        assert_eq!(vsize, 100_001);
        assert_eq!(va % VA_ALIGN, 0);
        assert_eq!(&a[ptr as usize..ptr as usize + 100_001], &kernel[..]);
        assert_eq!(a.len() as u32, ptr + raw);
        let e = u32_at(&a, 0x3c).unwrap() as usize;
        assert_eq!(u32_at(&a, e + 8), Some(0), "timestamp");
        assert!(
            u32_at(&a, e + 24 + 56).unwrap() >= va + vsize,
            "SizeOfImage"
        );
    }

    #[test]
    fn bad_stubs_and_names_are_refused() {
        let stub = stub();
        assert!(matches!(
            assemble(b"not a PE", "x", &[]),
            Err(UkiError::Stub { .. })
        ));
        let mut pe32 = stub.clone();
        let e = u32_at(&pe32, 0x3c).unwrap() as usize;
        put_u16(&mut pe32, e + 24, 0x10b);
        assert!(matches!(
            assemble(&pe32, "x", &[]),
            Err(UkiError::Stub { .. })
        ));
        let long = [Section {
            name: ".toolongname",
            data: b"",
        }];
        assert!(matches!(
            assemble(&stub, "x", &long),
            Err(UkiError::Section { .. })
        ));
        // More sections than the header room holds.
        let many: Vec<Section> = (0..40)
            .map(|_| Section {
                name: ".x",
                data: b"1",
            })
            .collect();
        assert!(matches!(
            assemble(&stub, "x", &many),
            Err(UkiError::Stub { .. })
        ));
    }
}
