//! Secure Boot for the VM scenarios: Debian's OVMF test key pair ("snakeoil", enrolled in
//! `OVMF_VARS_4M.snakeoil.fd`, see [`crate::vm::VmConfig::secure_boot`]), signing with
//! `sbsign`, and a release's signed UKI (`basalt_image::build::uki`) placed on a disk's ESP as
//! a Boot Loader Specification type #2 entry (`EFI/Linux/<name>.efi`, boot counting in the
//! file name), with systemd-boot itself signed.

use std::path::{Path, PathBuf};
use std::process::Command;

use basalt_disk::{Esp, FatImageEsp, Inventory};
use basalt_image::build::uki::{self, UkiInputs, STUB};

use crate::artifacts::MinimalImage;
use crate::error::{Error, Result};
use crate::hostile::release_cmdline;

/// Debian's OVMF test private key (encrypted; password `snakeoil`, package `ovmf`).
pub const SNAKEOIL_KEY: &str = "/usr/share/ovmf/PkKek-1-snakeoil.key";
/// Its certificate (PK, KEK and db of `OVMF_VARS_4M.snakeoil.fd`).
pub const SNAKEOIL_CERT: &str = "/usr/share/ovmf/PkKek-1-snakeoil.pem";
/// systemd-boot as Debian ships it (package `systemd-boot-efi`), unsigned.
pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// The snakeoil key without its password, written into `dir` (openssl), and its cert.
pub fn snakeoil_signer(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let key = dir.join("db.key");
    let out = Command::new("openssl")
        .args([
            "rsa",
            "-in",
            SNAKEOIL_KEY,
            "-passin",
            "pass:snakeoil",
            "-out",
        ])
        .arg(&key)
        .output()
        .map_err(|source| Error::ScenarioInput {
            path: key.clone(),
            problem: format!("running openssl (apt-get install openssl): {source}"),
        })?;
    if !out.status.success() {
        return Err(Error::ScenarioInput {
            path: PathBuf::from(SNAKEOIL_KEY),
            problem: format!(
                "openssl rsa: {} (apt-get install ovmf openssl)",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok((key, PathBuf::from(SNAKEOIL_CERT)))
}

fn uki_err(path: &Path) -> impl FnOnce(uki::UkiError) -> Error + '_ {
    move |e| Error::ScenarioInput {
        path: path.to_path_buf(),
        problem: e.to_string(),
    }
}

/// `image`'s UKI for the `/usr` with root hash `usrhash` (the release's own kernel,
/// initramfs and command line, plus `extra`), signed with `signer` when given; written to
/// `out`. os-release carries `ID=basalt` and the version, which systemd-boot sorts type #2
/// entries by (higher version first).
pub fn release_uki(
    image: &MinimalImage,
    usrhash: &str,
    extra: &str,
    signer: Option<&(PathBuf, PathBuf)>,
    out: &Path,
) -> Result<()> {
    let facts = &image.report.facts;
    let os_release = uki::os_release(&facts.os, &facts.version);
    let cmdline = release_cmdline(image, usrhash, extra);
    let unsigned = out.with_extension("unsigned.efi");
    uki::build(
        Path::new(STUB),
        &UkiInputs {
            kernel: &image.file(basalt_image::build::image::VMLINUZ),
            initrd: &image.file(basalt_image::build::image::INITRD_IMG),
            cmdline: &cmdline,
            os_release: &os_release,
        },
        &unsigned,
    )
    .map_err(uki_err(out))?;
    match signer {
        Some((key, cert)) => uki::sign(&unsigned, key, cert, out).map_err(uki_err(out))?,
        None => std::fs::rename(&unsigned, out).map_err(|source| Error::Rename {
            from: unsigned.clone(),
            to: out.to_path_buf(),
            source,
        })?,
    }
    Ok(())
}

/// The ESP of the disk image `disk`.
pub fn esp(disk: &Path) -> Result<FatImageEsp> {
    let err = |source| Error::Disk {
        path: disk.to_path_buf(),
        source,
    };
    let inv = Inventory::read_path(disk, None).map_err(err)?;
    FatImageEsp::open(disk, inv.esp.offset, inv.esp.size).map_err(err)
}

/// Make the ESP of `disk` a Secure Boot one: systemd-boot signed by `signer` (or `bootloader`
/// bytes as given, to test a tampered one), the type #1 entries removed, `ukis` written as
/// `EFI/Linux/<name>` (type #2 entries).
pub fn secure_esp(disk: &Path, bootloader: &[u8], ukis: &[(&str, &Path)]) -> Result<()> {
    let err = |source| Error::Disk {
        path: disk.to_path_buf(),
        source,
    };
    let mut esp = esp(disk)?;
    esp.write_atomic("EFI/BOOT/BOOTX64.EFI", bootloader)
        .map_err(err)?;
    for e in esp.list("loader/entries").map_err(err)?.unwrap_or_default() {
        if !e.is_dir {
            esp.remove(&format!("loader/entries/{}", e.name))
                .map_err(err)?;
        }
    }
    for (name, file) in ukis {
        let bytes = std::fs::read(file).map_err(|source| Error::ReadFile {
            path: file.to_path_buf(),
            source,
        })?;
        esp.write_atomic(&format!("EFI/Linux/{name}"), &bytes)
            .map_err(err)?;
    }
    Ok(())
}

/// systemd-boot signed by `signer`, written to `out`.
pub fn signed_systemd_boot(signer: &(PathBuf, PathBuf), out: &Path) -> Result<Vec<u8>> {
    uki::sign(Path::new(SYSTEMD_BOOT), &signer.0, &signer.1, out).map_err(uki_err(out))?;
    std::fs::read(out).map_err(|source| Error::ReadFile {
        path: out.to_path_buf(),
        source,
    })
}

/// The names of the files in `EFI/Linux` of `disk`'s ESP, sorted.
pub fn type2_entries(disk: &Path) -> Result<Vec<String>> {
    let esp = esp(disk)?;
    let mut names: Vec<String> = esp
        .list("EFI/Linux")
        .map_err(|source| Error::Disk {
            path: disk.to_path_buf(),
            source,
        })?
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !e.is_dir)
        .map(|e| e.name)
        .collect();
    names.sort();
    Ok(names)
}
