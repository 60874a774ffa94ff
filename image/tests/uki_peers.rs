//! The UKI builder against its peers: `objdump` (package `binutils`) reads the sections we
//! add with their sizes; `sbsign` signs it without complaint (no gaps between sections) and
//! `sbverify` (package `sbsigntool`) accepts the signature — and refuses the image after a
//! one-byte change in the kernel, the initramfs or the command line, and an unsigned one.
//! The keys are Debian's OVMF test pair (`/usr/share/ovmf/PkKek-1-snakeoil.*`, package
//! `ovmf`), the one the Secure Boot VM scenario enrols. `basalt secure-boot release-uki` builds
//! a release folder's UKI: `objdump -s` reads back its command line and os-release.

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

/// A release folder as `basalt image build` leaves it (only what a UKI needs).
fn release_folder(d: &Path, os: &str, version: &str, root_hash: &str) -> std::path::PathBuf {
    use basalt_image::build::image::BuildFacts;
    let dir = d.join(format!("release-{os}-{version}"));
    std::fs::create_dir_all(&dir).expect("create the release folder");
    std::fs::write(dir.join("vmlinuz"), vec![0x4bu8; 200_001]).expect("write vmlinuz");
    std::fs::write(dir.join("initrd.img"), vec![0x17u8; 77_777]).expect("write initrd.img");
    let facts = BuildFacts {
        builder: "test".into(),
        cache_key: "k".into(),
        os: os.into(),
        version: version.into(),
        profile: "minimal".into(),
        variant: basalt_image::build::Variant::Product,
        kernel_package: "linux-image-test".into(),
        kernel_version: "6.1.0-test".into(),
        root_hash: root_hash.into(),
        salt: "00".repeat(32),
        data_blocks: 1,
        hash_offset: 4096,
        usr_img_bytes: 3 * 4096,
        usr_tree_bytes: 4096,
        vmlinuz_bytes: 200_001,
        initrd_bytes: 77_777,
        initrd_modules: vec![],
        usr_modules: vec![],
        trimmed_bytes: 0,
        disk_bytes: 0,
        cmdline: "console=ttyS0 panic=-1".into(),
        staging_key: None,
        packages: vec![],
        host_packages: vec![],
        kernel_deb: basalt_image::kernel::DebFacts {
            name: "linux-image-test".into(),
            version: "6.1.0-test".into(),
            arch: "amd64".into(),
            source: "linux".into(),
            source_version: "6.1.0-test".into(),
            sha256: "00".repeat(32),
        },
        basalt_files: vec![],
        durations_ms: vec![],
    };
    std::fs::write(
        dir.join("build.json"),
        serde_json::to_vec_pretty(&facts).expect("serialise build.json"),
    )
    .expect("write build.json");
    dir
}

/// The bytes of section `name` as `objdump -s` dumps them (hex columns after the address).
fn section(file: &Path, name: &str) -> String {
    let out = run(
        Command::new("objdump").args(["-s", "-j", name]).arg(file),
        "binutils",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut bytes = Vec::new();
    let header = format!("Contents of section {name}:");
    for line in text.lines().skip_while(|l| *l != header).skip(1) {
        // " 19100 23232323 204c6f61 64657249 6e666f3a  #### LoaderInfo:"
        let hex: String = line
            .get(1..)
            .unwrap_or("")
            .split("  ")
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .collect();
        for pair in hex.as_bytes().chunks(2) {
            let pair = std::str::from_utf8(pair).expect("objdump prints ASCII");
            bytes.push(u8::from_str_radix(pair, 16).expect("objdump prints hex"));
        }
    }
    String::from_utf8(bytes).expect("the section is UTF-8")
}

#[test]
fn basalt_secure_boot_release_uki_builds_the_release_s_signed_uki() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let (key, cert) = snakeoil(d);
    let hash = "5e".repeat(32);
    let rel = release_folder(d, "basalt", "1.2.3", &hash);
    let basalt = |args: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_basalt"))
            .args(["secure-boot", "release-uki"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = basalt(&[
        "--key".as_ref(),
        key.as_os_str(),
        "--cert".as_ref(),
        cert.as_os_str(),
        rel.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uki_path = rel.join("basalt-1.2.3.efi");
    uki::verify(&uki_path, &cert).unwrap();
    assert_eq!(
        section(&uki_path, ".cmdline"),
        format!("console=ttyS0 panic=-1 usrhash={hash}")
    );
    let osrel = section(&uki_path, ".osrel");
    assert!(
        osrel.contains("\nID=basalt\n") && osrel.contains("\nVERSION_ID=1.2.3\n"),
        "{osrel}"
    );
    assert!(
        !rel.join("basalt-1.2.3.efi.unsigned").exists(),
        "the unsigned intermediate was left behind"
    );
    // Unsigned when no key is given; a key without its certificate is a usage error.
    let rel2 = release_folder(d, "basalt", "1.2.4", &hash);
    assert!(basalt(&[rel2.as_os_str()]).status.success());
    assert!(uki::verify(&rel2.join("basalt-1.2.4.efi"), &cert).is_err());
    let half = basalt(&["--key".as_ref(), key.as_os_str(), rel2.as_os_str()]);
    assert_eq!(half.status.code(), Some(2));

    // build.json facts that cannot go into a UKI are refused, naming the file.
    for (os, version, root_hash, what) in [
        ("basalt", "1.0.0", "0".repeat(64), "all-zero root hash"),
        ("basalt", "1.0.0", "xy".repeat(32), "non-hex root hash"),
        ("../evil", "1.0.0", hash.clone(), "os with a path"),
        (
            "basalt",
            "1.0.0/../../x",
            hash.clone(),
            "version with a path",
        ),
    ] {
        let bad = release_folder(d, "bad", "0.0.0", &root_hash);
        let facts_path = bad.join("build.json");
        let mut facts: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&facts_path).unwrap()).unwrap();
        facts["os"] = os.into();
        facts["version"] = version.into();
        std::fs::write(&facts_path, serde_json::to_vec(&facts).unwrap()).unwrap();
        let r = uki::build_release(&bad, Path::new(STUB), None);
        let e = r.expect_err(what);
        assert!(
            matches!(e, uki::UkiError::Release { .. }) && e.to_string().contains("build.json"),
            "{what}: {e}"
        );
        std::fs::remove_dir_all(&bad).unwrap();
    }
    let e = uki::build_release(&d.join("missing"), Path::new(STUB), None).unwrap_err();
    assert!(e.to_string().contains("build.json"), "{e}");
}

/// `uki::secure_boot_disk` (what `basalt image build --secure-boot-key` does to disk.img):
/// slot A's kernel + initrd entry becomes an `efi` entry naming the release's signed UKI, the
/// loose files go, systemd-boot on the ESP is signed (`sbverify`); a UKI whose command line
/// boots another `/usr` is refused before the ESP changes.
#[test]
fn secure_boot_disk_boots_the_release_uki_through_signed_systemd_boot() {
    use basalt_disk::bls::entry::{BasaltEntry, LoaderType};
    use basalt_disk::{BlsBackend, BootControl, BootStatus, BootTarget, Esp, LayoutSpec, Slot};
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let (key, cert) = snakeoil(d);
    let hash = "5e".repeat(32);
    let rel = release_folder(d, "basalt", "1.2.3", &hash);
    let uki_path = uki::build_release(&rel, Path::new(STUB), Some((&key, &cert))).unwrap();
    let disk = d.join("disk.img");
    let spec = LayoutSpec {
        disk_size: 48 << 20,
        esp_size: 16 << 20,
        usr_size: 4 << 20,
        verity_size: 1 << 20,
        slot_reserve: 1 << 20,
        root_size: None,
        align: 1 << 20,
    };
    basalt_disk::create_image(&disk, &spec).unwrap();
    let inv = basalt_disk::Inventory::read_path(&disk, None).unwrap();
    let loose = BootTarget {
        version: "1.2.3".into(),
        usr_hash: hash.clone(),
        kernel: Some(rel.join("vmlinuz")),
        initrd: Some(rel.join("initrd.img")),
        options: "console=ttyS0".into(),
    };
    basalt_disk::bls::install_boot_esp(
        &disk,
        inv.esp.offset,
        inv.esp.size,
        Path::new(basalt_disk::esp::SYSTEMD_BOOT_EFI),
        &[(Slot::A, loose)],
    )
    .unwrap();
    let esp = || {
        let inv = basalt_disk::Inventory::read_path(&disk, None).unwrap();
        basalt_disk::FatImageEsp::open(&disk, inv.esp.offset, inv.esp.size).unwrap()
    };
    let before: Vec<u8> = std::fs::read(&disk).unwrap();

    // A UKI that boots another /usr: refused, the disk unchanged.
    let lying = d.join("lying.efi");
    uki::build(
        Path::new(STUB),
        &UkiInputs {
            kernel: &rel.join("vmlinuz"),
            initrd: &rel.join("initrd.img"),
            cmdline: &format!("usrhash={}", "6f".repeat(32)),
            os_release: &uki::os_release("basalt", "1.2.3"),
        },
        &lying,
    )
    .unwrap();
    let sd_boot = Path::new(basalt_disk::esp::SYSTEMD_BOOT_EFI);
    let e =
        uki::secure_boot_disk(&disk, &lying, "1.2.3", &hash, (&key, &cert), sd_boot).unwrap_err();
    assert!(e.to_string().contains("boots usrhash="), "{e}");
    assert!(std::fs::read(&disk).unwrap() == before, "the disk changed");

    uki::secure_boot_disk(&disk, &uki_path, "1.2.3", &hash, (&key, &cert), sd_boot).unwrap();
    let bls = BlsBackend::new(esp());
    let st = bls.status().unwrap();
    assert_eq!(st.next, Some(Slot::A));
    assert_eq!(st.slot(Slot::A).status, BootStatus::Good);
    let entries = bls.entries().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e: &BasaltEntry = entries[0].basalt.as_ref().unwrap();
    assert_eq!(e.loader, LoaderType::Efi);
    assert_eq!(e.linux, "/basalt/1.2.3/uki.efi");
    assert!(
        e.options
            .starts_with(&format!("console=ttyS0 panic=-1 usrhash={hash}")),
        "{}",
        e.options
    );
    let files: Vec<String> = bls
        .esp()
        .list("basalt/1.2.3")
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(files, ["uki.efi"], "the loose kernel and initrd are gone");
    assert!(bls.esp().read("basalt/1.2.3/uki.efi").unwrap() == std::fs::read(&uki_path).unwrap());
    let loader = d.join("BOOTX64.EFI");
    std::fs::write(&loader, bls.esp().read("EFI/BOOT/BOOTX64.EFI").unwrap()).unwrap();
    uki::verify(&loader, &cert).expect("systemd-boot on the ESP is signed");
    uki::verify(&uki_path, &cert).expect("the UKI is signed");
}
