//! Drives the real `basalt` binary through keys, trust roots and signed manifests, and checks
//! its files against OpenSSL and coreutils (peers for PEM/SPKI, Ed25519, key ids and DSSE).

// Test helpers outside #[test] functions panic on setup failures, like the tests do.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};

const NOW: &str = "2026-06-01T12:00:00Z";

fn basalt(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_basalt"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running basalt")
}

fn tool(dir: &Path, name: &str, package: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(name)
        .current_dir(dir)
        .args(args)
        .output()
        .with_context(|| format!("running {name}: install the Debian package `{package}`"))?;
    ensure!(
        out.status.success(),
        "{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "expected success, got {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts exit code 3 and that stderr names `reason`.
fn refused(out: &Output, reason: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "expected exit 3, stderr: {stderr}"
    );
    assert!(
        stderr.contains(reason),
        "stderr should name {reason:?}: {stderr}"
    );
}

fn manifest_json(version: &str, sequence: u64) -> String {
    format!(
        r#"{{
  "schema_version": 1,
  "os": "basalt",
  "version": "{version}",
  "channel": "stable",
  "arch": "x86_64",
  "sequence": {sequence},
  "issued_at": "2026-06-01T11:00:00Z",
  "expires_at": "2026-06-08T12:00:00Z",
  "artifacts": [
    {{
      "kind": "usr",
      "name": "usr.img",
      "size": 1052672,
      "sha256": "{h1}",
      "compression": {{"algorithm": "zstd", "compressed_size": 4000, "compressed_sha256": "{h2}"}},
      "verity": {{
        "root_hash": "{h3}", "salt": "00ff", "data_blocks": 256, "hash_offset": 1048576,
        "hash_algorithm": "sha256", "data_block_size": 4096, "hash_block_size": 4096
      }}
    }},
    {{"kind": "kernel", "name": "vmlinuz", "size": 5000, "sha256": "{h4}"}}
  ]
}}"#,
        h1 = "11".repeat(32),
        h2 = "22".repeat(32),
        h3 = "33".repeat(32),
        h4 = "44".repeat(32),
    )
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

/// Keys a, b (threshold 2 root in trust.json) and a manifest signed by both.
fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    ok(&basalt(&dir, &["key", "generate", "a"]));
    ok(&basalt(&dir, &["key", "generate", "b"]));
    ok(&basalt(
        &dir,
        &[
            "trust",
            "init",
            "--key",
            "a.pub",
            "--key",
            "b.pub",
            "--threshold",
            "2",
            "--sign-key",
            "a.key",
            "--sign-key",
            "b.key",
            "--out",
            "trust.json",
        ],
    ));
    std::fs::write(dir.join("m.json"), manifest_json("1.2.0", 10)).unwrap();
    ok(&basalt(
        &dir,
        &[
            "manifest", "sign", "m.json", "--key", "a.key", "--key", "b.key", "--out", "m.signed",
        ],
    ));
    Setup { _tmp: tmp, dir }
}

fn verify(dir: &Path, file: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "manifest",
        "verify",
        file,
        "--trust",
        "trust.json",
        "--now",
        NOW,
    ];
    args.extend_from_slice(extra);
    basalt(dir, &args)
}

#[test]
fn generate_init_sign_verify_round_trip() {
    let s = setup();
    let stdout = ok(&verify(
        &s.dir,
        "m.signed",
        &[
            "--installed-version",
            "1.1.0",
            "--min-sequence",
            "10",
            "--os",
            "basalt",
            "--arch",
            "x86_64",
            "--channel",
            "stable",
        ],
    ));
    let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let original: serde_json::Value = serde_json::from_str(&manifest_json("1.2.0", 10)).unwrap();
    assert_eq!(printed, original);
}

#[test]
fn refusals_exit_3_with_the_reason() {
    let s = setup();
    let d = &s.dir;
    refused(
        &verify(d, "m.signed", &["--channel", "beta"]),
        "channel \"stable\"",
    );
    refused(
        &verify(d, "m.signed", &["--os", "flatcar"]),
        "OS \"basalt\"",
    );
    refused(
        &verify(d, "m.signed", &["--arch", "aarch64"]),
        "architecture",
    );
    refused(
        &verify(d, "m.signed", &["--installed-version", "1.3.0"]),
        "1.2.0 is older than the installed 1.3.0",
    );
    refused(
        &verify(d, "m.signed", &["--min-sequence", "11"]),
        "sequence 10",
    );
    refused(
        &verify(d, "m.signed", &["--last-sequence", "10"]),
        "sequence 10",
    );
    let later = basalt(
        d,
        &[
            "manifest",
            "verify",
            "m.signed",
            "--trust",
            "trust.json",
            "--now",
            "2026-07-01T00:00:00Z",
        ],
    );
    refused(&later, "expired");
    let earlier = basalt(
        d,
        &[
            "manifest",
            "verify",
            "m.signed",
            "--trust",
            "trust.json",
            "--now",
            "2026-06-01T10:00:00Z",
        ],
    );
    refused(&earlier, "clock skew");

    // Signed by one key of a threshold-2 root.
    ok(&basalt(
        d,
        &[
            "manifest",
            "sign",
            "m.json",
            "--key",
            "a.key",
            "--out",
            "one.signed",
        ],
    ));
    refused(
        &verify(d, "one.signed", &[]),
        "signed by 1 of the keys of trust root generation 1, 2 needed",
    );

    // One flipped byte inside the base64 payload.
    let mut bytes = std::fs::read(d.join("m.signed")).unwrap();
    let at = bytes.len() / 3;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(d.join("tampered.signed"), bytes).unwrap();
    let out = verify(d, "tampered.signed", &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A trust root is not a release.
    refused(&verify(d, "trust.json", &[]), "payload type");
}

#[test]
fn downgrade_override_is_accepted_and_reported() {
    let s = setup();
    let out = verify(
        &s.dir,
        "m.signed",
        &["--installed-version", "1.3.0", "--allow-downgrade"],
    );
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("downgrade accepted"));
}

#[test]
fn key_generate_writes_0600_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    ok(&basalt(tmp.path(), &["key", "generate", "k"]));
    let mode = std::fs::metadata(tmp.path().join("k.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let before = std::fs::read(tmp.path().join("k.key")).unwrap();
    let again = basalt(tmp.path(), &["key", "generate", "k"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(tmp.path().join("k.key")).unwrap(), before);
}

#[test]
fn trust_rotation_through_the_cli() {
    let s = setup();
    let d = &s.dir;
    ok(&basalt(d, &["key", "generate", "c"]));
    // Only the new key signs: refused (exit 3), nothing written.
    let out = basalt(
        d,
        &[
            "trust",
            "rotate",
            "--from",
            "trust.json",
            "--key",
            "c.pub",
            "--threshold",
            "1",
            "--sign-key",
            "c.key",
            "--out",
            "gen2.json",
        ],
    );
    refused(&out, "the current root");
    assert!(!d.join("gen2.json").exists());
    ok(&basalt(
        d,
        &[
            "trust",
            "rotate",
            "--from",
            "trust.json",
            "--key",
            "c.pub",
            "--threshold",
            "1",
            "--sign-key",
            "a.key",
            "--sign-key",
            "b.key",
            "--sign-key",
            "c.key",
            "--out",
            "gen2.json",
        ],
    ));
    let summary = ok(&basalt(d, &["trust", "verify", "trust.json", "gen2.json"]));
    assert!(summary.contains("\"generation\": 2"), "{summary}");
    ok(&basalt(
        d,
        &[
            "manifest", "sign", "m.json", "--key", "c.key", "--out", "c.signed",
        ],
    ));
    let chain = [
        "--trust",
        "trust.json",
        "--trust",
        "gen2.json",
        "--now",
        NOW,
    ];
    let mut args = vec!["manifest", "verify", "c.signed"];
    args.extend_from_slice(&chain);
    ok(&basalt(d, &args));
    // Generation 1 alone does not know key c.
    refused(&verify(d, "c.signed", &[]), "not one of the keys");
}

#[test]
fn usr_hash_statement_through_the_cli() {
    let s = setup();
    let d = &s.dir;
    std::fs::write(d.join("usr.data"), vec![0x42u8; 40 * 4096]).unwrap();
    let formatted = ok(&basalt(
        d,
        &[
            "verity", "format", "usr.data", "usr.hash", "--salt", "5a5a", "--json",
        ],
    ));
    let info: serde_json::Value = serde_json::from_str(&formatted).unwrap();
    let hash = info["root_hash"].as_str().unwrap().to_owned();
    ok(&basalt(
        d,
        &[
            "manifest",
            "sign-usr-hash",
            "--os",
            "basalt",
            "--version",
            "1.2.0",
            "--root-hash",
            &hash,
            "--hash-image",
            "usr.hash",
            "--key",
            "a.key",
            "--key",
            "b.key",
            "--out",
            "usr.sig",
        ],
    ));
    let statement = ok(&basalt(
        d,
        &[
            "manifest",
            "verify-usr-hash",
            "usr.sig",
            "--trust",
            "trust.json",
            "--root-hash",
            &hash,
        ],
    ));
    // The whole parameter set, from the superblock.
    let st: serde_json::Value = serde_json::from_str(&statement).unwrap();
    assert_eq!(st["verity"]["salt"], "5a5a", "{statement}");
    assert_eq!(st["verity"]["data_blocks"], 40, "{statement}");
    assert_eq!(st["verity"]["hash_offset"], 40 * 4096, "{statement}");
    assert_eq!(st["verity"]["root_hash"], hash.as_str(), "{statement}");
    // Not a hash image: refused before anything is signed.
    let out = basalt(
        d,
        &[
            "manifest",
            "sign-usr-hash",
            "--os",
            "basalt",
            "--version",
            "1.2.0",
            "--root-hash",
            &hash,
            "--hash-image",
            "usr.data",
            "--key",
            "a.key",
            "--out",
            "bad.sig",
        ],
    );
    assert!(!out.status.success() && !d.join("bad.sig").exists());
    let other = "cd".repeat(32);
    refused(
        &basalt(
            d,
            &[
                "manifest",
                "verify-usr-hash",
                "usr.sig",
                "--trust",
                "trust.json",
                "--root-hash",
                &other,
            ],
        ),
        "binds root hash",
    );
}

// ---- peers: OpenSSL and coreutils ----

/// The raw 32-byte key inside a PEM public key, as OpenSSL decodes it.
fn openssl_raw_public(dir: &Path, pem: &str) -> Result<Vec<u8>> {
    let der = tool(
        dir,
        "openssl",
        "openssl",
        &["pkey", "-pubin", "-in", pem, "-outform", "DER"],
    )?
    .stdout;
    ensure!(
        der.len() == 44,
        "Ed25519 SPKI is 44 bytes, got {}",
        der.len()
    );
    Ok(der[12..].to_vec())
}

#[test]
fn public_key_file_and_key_id_match_openssl_and_sha256sum() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let d = tmp.path();
    let keyid = ok(&basalt(d, &["key", "generate", "k"])).trim().to_owned();
    let raw = openssl_raw_public(d, "k.pub")?;
    std::fs::write(d.join("raw.bin"), &raw)?;
    let sum = tool(d, "sha256sum", "coreutils", &["raw.bin"])?.stdout;
    let sum = String::from_utf8(sum)?;
    assert_eq!(sum.split_whitespace().next(), Some(keyid.as_str()));
    // The trust root lists the same raw key (hex) that OpenSSL decoded.
    ok(&basalt(
        d,
        &[
            "trust",
            "init",
            "--key",
            "k.pub",
            "--threshold",
            "1",
            "--sign-key",
            "k.key",
            "--out",
            "t.json",
        ],
    ));
    let env: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("t.json"))?)?;
    std::fs::write(
        d.join("payload.b64"),
        env["payload"].as_str().unwrap_or_default(),
    )?;
    let payload = tool(d, "base64", "coreutils", &["-d", "payload.b64"])?.stdout;
    let doc: serde_json::Value = serde_json::from_slice(&payload)?;
    assert_eq!(doc["keys"][0]["public_key"], hex::encode(&raw));
    Ok(())
}

#[test]
fn envelope_signed_by_openssl_verifies() -> Result<()> {
    // Everything from peers: the key (openssl genpkey, PKCS#8 v1), its public key file, the
    // Ed25519 signature (openssl pkeyutl) over the DSSE PAE built here from the spec, and
    // the base64 (coreutils). basalt must accept the resulting envelope.
    let tmp = tempfile::tempdir()?;
    let d = tmp.path();
    tool(
        d,
        "openssl",
        "openssl",
        &["genpkey", "-algorithm", "ed25519", "-out", "o.key"],
    )?;
    tool(
        d,
        "openssl",
        "openssl",
        &["pkey", "-in", "o.key", "-pubout", "-out", "o.pub"],
    )?;
    ok(&basalt(
        d,
        &[
            "trust",
            "init",
            "--key",
            "o.pub",
            "--threshold",
            "1",
            "--sign-key",
            "o.key",
            "--out",
            "trust.json",
        ],
    ));
    let raw = openssl_raw_public(d, "o.pub")?;
    std::fs::write(d.join("raw.bin"), &raw)?;
    let keyid = String::from_utf8(tool(d, "sha256sum", "coreutils", &["raw.bin"])?.stdout)?;
    let keyid = keyid
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();

    let payload_type = "application/vnd.basalt.release.v1+json";
    let body = serde_json::to_vec(&serde_json::from_str::<serde_json::Value>(&manifest_json(
        "2.0.0", 5,
    ))?)?;
    // DSSE protocol: "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body.
    let mut pae = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        body.len()
    )
    .into_bytes();
    pae.extend_from_slice(&body);
    std::fs::write(d.join("pae.bin"), &pae)?;
    std::fs::write(d.join("body.bin"), &body)?;
    tool(
        d,
        "openssl",
        "openssl",
        &[
            "pkeyutl", "-sign", "-rawin", "-inkey", "o.key", "-in", "pae.bin", "-out", "sig.bin",
        ],
    )?;
    let b64 = |file: &str| -> Result<String> {
        Ok(String::from_utf8(
            tool(d, "base64", "coreutils", &["-w0", file])?.stdout,
        )?)
    };
    let envelope = serde_json::json!({
        "payload": b64("body.bin")?,
        "payloadType": payload_type,
        "signatures": [{"keyid": keyid, "sig": b64("sig.bin")?}],
    });
    std::fs::write(d.join("peer.signed"), serde_json::to_vec_pretty(&envelope)?)?;
    let stdout = ok(&verify(d, "peer.signed", &["--os", "basalt"]));
    assert!(stdout.contains("\"2.0.0\""));
    Ok(())
}
