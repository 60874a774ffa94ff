//! `basalt secure-boot keys|sign|uki` against the peers: `openssl` reads the certificates,
//! each `.auth` ends with its key's signature list (what `cert-to-efi-sig-list` wrote),
//! `sbverify` (package `sbsigntool`) accepts an image signed with the db key against db's
//! certificate and not against PK's, and a second `keys` into the same folder is refused
//! (keys are never overwritten). The enrolment itself runs under OVMF in
//! `tests/tests/boot_secure.rs`.

use std::path::Path;
use std::process::{Command, Output};

fn basalt(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_basalt"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running basalt")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tool(dir: &Path, name: &str, package: &str, args: &[&str]) -> Output {
    Command::new(name)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name} ({e}): apt-get install {package}"))
}

#[test]
fn keys_sign_and_verify_with_the_peers() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let owner = "5a1d3a6e-0b1c-4d2e-9f30-112233445566";
    ok(&basalt(
        d,
        &[
            "secure-boot",
            "keys",
            "--out",
            "keys",
            "--common-name",
            "Test Fleet",
            "--owner",
            owner,
        ],
    ));
    let k = d.join("keys");
    for key in ["PK", "KEK", "db"] {
        let subject = ok(&tool(
            &k,
            "openssl",
            "openssl",
            &["x509", "-noout", "-subject", "-in", &format!("{key}.crt")],
        ));
        assert!(subject.contains(&format!("Test Fleet {key}")), "{subject}");
        let esl = std::fs::read(k.join(format!("{key}.esl"))).unwrap();
        let auth = std::fs::read(k.join(format!("{key}.auth"))).unwrap();
        assert!(auth.len() > esl.len() && auth.ends_with(&esl), "{key}.auth");
        let on_esp = std::fs::read(k.join(format!("loader/keys/auto/{key}.auth"))).unwrap();
        assert_eq!(on_esp, auth);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(k.join(format!("{key}.key")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}.key");
    }
    assert_eq!(
        std::fs::read_to_string(k.join("owner.guid"))
            .unwrap()
            .trim(),
        owner
    );
    // The lists name the owner GUID (EFI_SIGNATURE_DATA.SignatureOwner, mixed-endian).
    let esl = std::fs::read(k.join("db.esl")).unwrap();
    let g = basalt_disk::gpt::Guid::parse(owner).unwrap().to_gpt_bytes();
    assert!(esl.windows(16).any(|w| w == g), "owner GUID not in db.esl");

    ok(&basalt(
        d,
        &[
            "secure-boot",
            "sign",
            "--key",
            "keys/db.key",
            "--cert",
            "keys/db.crt",
            "--out",
            "sd-boot.signed.efi",
            "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        ],
    ));
    let good = tool(
        d,
        "sbverify",
        "sbsigntool",
        &["--cert", "keys/db.crt", "sd-boot.signed.efi"],
    );
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let wrong = tool(
        d,
        "sbverify",
        "sbsigntool",
        &["--cert", "keys/PK.crt", "sd-boot.signed.efi"],
    );
    assert!(
        !wrong.status.success(),
        "signed by db but verified against PK"
    );

    let again = basalt(d, &["secure-boot", "keys", "--out", "keys"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    let bad_name = basalt(d, &["secure-boot", "keys", "--out", "k2", "--name", "../x"]);
    assert!(!bad_name.status.success());
}
