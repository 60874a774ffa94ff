//! The UKI builder against its peers: `objdump` (package `binutils`) reads the sections we
//! add with their sizes; `sbsign` signs it without complaint (no gaps between sections) and
//! `sbverify` (package `sbsigntool`) accepts the signature — and refuses the image after a
//! one-byte change in the kernel, the initramfs or the command line, and an unsigned one.
//! The keys are Debian's OVMF test pair (`/usr/share/ovmf/PkKek-1-snakeoil.*`, package
//! `ovmf`), the one the Secure Boot VM scenario enrols.

use std::path::Path;
use std::process::Command;

use basalt_image::build::uki::{self, UkiInputs, STUB};

fn run(cmd: &mut Command, package: &str) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?} ({e}): apt-get install {package}"));
    out
}

/// The snakeoil key (encrypted with the password `snakeoil`) as a plain PEM, and its cert.
fn snakeoil(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = dir.join("db.key");
    let out = run(
        Command::new("openssl")
            .args([
                "rsa",
                "-in",
                "/usr/share/ovmf/PkKek-1-snakeoil.key",
                "-passin",
                "pass:snakeoil",
                "-out",
            ])
            .arg(&key),
        "openssl",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        key,
        Path::new("/usr/share/ovmf/PkKek-1-snakeoil.pem").to_path_buf(),
    )
}

#[test]
fn objdump_reads_it_and_sbverify_accepts_only_the_signed_unchanged_image() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let kernel = d.join("vmlinuz");
    let initrd = d.join("initrd.img");
    std::fs::write(
        &kernel,
        (0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::write(&initrd, vec![0x17u8; 123_457]).unwrap();
    let cmdline = format!("console=ttyS0 usrhash={}", "ab".repeat(32));
    let os_release = "ID=basalt\nVERSION_ID=1.0.0\n";
    let unsigned = d.join("basalt.efi");
    uki::build(
        Path::new(STUB),
        &UkiInputs {
            kernel: &kernel,
            initrd: &initrd,
            cmdline: &cmdline,
            os_release,
        },
        &unsigned,
    )
    .unwrap();

    let out = run(Command::new("objdump").arg("-h").arg(&unsigned), "binutils");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    for (name, size) in [
        (".osrel", os_release.len()),
        (".cmdline", cmdline.len()),
        (".linux", 300_000),
        (".initrd", 123_457),
    ] {
        let line = listing
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("objdump lists no {name}:\n{listing}"));
        let objdump_size =
            usize::from_str_radix(line.split_whitespace().nth(2).unwrap(), 16).unwrap();
        assert_eq!(objdump_size, size, "{name}: {line}");
    }

    let (key, cert) = snakeoil(d);
    let signed = d.join("basalt.signed.efi");
    let out = run(
        Command::new("sbsign")
            .arg("--key")
            .arg(&key)
            .arg("--cert")
            .arg(&cert)
            .arg("--output")
            .arg(&signed)
            .arg(&unsigned),
        "sbsigntool",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(!warnings.contains("gaps"), "sbsign: {warnings}");
    uki::verify(&signed, &cert).unwrap();
    assert!(
        uki::verify(&unsigned, &cert).is_err(),
        "an unsigned image verified"
    );

    let bytes = std::fs::read(&signed).unwrap();
    for what in [
        &b"console=ttyS0"[..],
        &[0x17u8; 64][..],
        &[0u8, 1, 2, 3][..],
    ] {
        let at = bytes.windows(what.len()).position(|w| w == what).unwrap();
        let mut changed = bytes.clone();
        changed[at + 1] ^= 1;
        let path = d.join("changed.efi");
        std::fs::write(&path, &changed).unwrap();
        assert!(
            uki::verify(&path, &cert).is_err(),
            "a changed byte at {at} verified"
        );
    }
}
