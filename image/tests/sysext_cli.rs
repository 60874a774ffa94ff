//! The `basalt sysext` CLI on the example extension `tools`, built from real Debian packages
//! (strace, jq and the libraries the container-host base lacks), then verified, inspected and
//! refused when tampered with or incompatible. The packages come from the host's apt lists
//! and are cached in `build/cache/debs`.

// Test helpers outside #[test] functions panic on setup failures, like the tests do.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use basalt_manifest::{sign_trust_root, SigningKey, TrustRootDocument};

/// The example extension: a small debugging set for a container host, every file under /usr.
const TOOLS_PACKAGES: [&str; 5] = ["strace", "libunwind8", "jq", "libjq1", "libonig5"];

fn basalt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args(args)
        .output()
        .expect("running basalt")
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

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn tools_from_debian_packages_build_verify_inspect() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys: Vec<SigningKey> = (1..=3)
        .map(|n| SigningKey::from_seed(&[n; 32]).unwrap())
        .collect();
    for (i, k) in keys.iter().enumerate() {
        std::fs::write(dir.join(format!("k{i}.key")), k.to_pem()).unwrap();
    }
    let publics: Vec<_> = keys.iter().map(SigningKey::public_key).collect();
    let doc = TrustRootDocument::new(1, 2, &publics, None);
    let trust = dir.join("trust.json");
    std::fs::write(
        &trust,
        sign_trust_root(&doc, &[&keys[0], &keys[1]]).unwrap(),
    )
    .unwrap();
    let out = dir.join("out");
    let mut args = vec![
        "sysext",
        "build",
        "--name",
        "tools",
        "--version",
        "1.0.0",
        "--sysext-level",
        "1",
        "--arch",
        "x86-64",
    ];
    for p in TOOLS_PACKAGES {
        args.extend(["--package", p]);
    }
    let k0 = dir.join("k0.key");
    let k1 = dir.join("k1.key");
    args.extend([
        "--key",
        s(&k0),
        "--key",
        s(&k1),
        "--trust",
        s(&trust),
        "--out",
        s(&out),
    ]);
    let text = ok(&basalt(&args));
    for p in TOOLS_PACKAGES {
        assert!(text.contains(&format!("package {p} ")), "{text}");
    }
    let img = out.join("tools.raw");

    // Verified, and compatible with a host of the same level.
    let os_release = dir.join("os-release");
    std::fs::write(&os_release, "ID=basalt\nVERSION_ID=2.0.0\nSYSEXT_LEVEL=1\n").unwrap();
    let text = ok(&basalt(&[
        "sysext",
        "verify",
        s(&img),
        "--trust",
        s(&trust),
        "--os-release",
        s(&os_release),
        "--arch",
        "x86-64",
    ]));
    assert!(
        text.contains("extension tools 1.0.0 for basalt verified"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&basalt(&[
        "sysext",
        "inspect",
        s(&img),
        "--trust",
        s(&trust),
        "--json",
    ])))
    .unwrap();
    assert_eq!(json["name"], "tools");
    assert_eq!(json["version"], "1.0.0");

    // The content: the tools and their libraries, no documentation, and jq works.
    let x = dir.join("x");
    let fsck = Command::new("fsck.erofs")
        .arg(format!("--extract={}", x.display()))
        .arg(&img)
        .output()
        .expect("running fsck.erofs: install the Debian package `erofs-utils`");
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stderr)
    );
    for f in ["usr/bin/strace", "usr/bin/jq"] {
        assert!(x.join(f).is_file(), "{f} missing");
    }
    assert!(!x.join("usr/share/doc").exists(), "docs are pruned");
    let jq = Command::new(x.join("usr/bin/jq"))
        .env("LD_LIBRARY_PATH", x.join("usr/lib/x86_64-linux-gnu"))
        .args(["-n", "1+1"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&jq.stdout).trim(), "2", "{jq:?}");

    // Refusals through the CLI: another level, another architecture, a flipped byte.
    std::fs::write(&os_release, "ID=basalt\nVERSION_ID=3.0.0\nSYSEXT_LEVEL=2\n").unwrap();
    refused(
        &basalt(&[
            "sysext",
            "verify",
            s(&img),
            "--trust",
            s(&trust),
            "--os-release",
            s(&os_release),
        ]),
        "SYSEXT_LEVEL=1",
    );
    std::fs::write(&os_release, "ID=basalt\nVERSION_ID=2.0.0\nSYSEXT_LEVEL=1\n").unwrap();
    refused(
        &basalt(&[
            "sysext",
            "verify",
            s(&img),
            "--trust",
            s(&trust),
            "--os-release",
            s(&os_release),
            "--arch",
            "arm64",
        ]),
        "ARCHITECTURE=x86-64",
    );
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[8192] ^= 0x40;
    std::fs::write(&img, &bytes).unwrap();
    refused(
        &basalt(&["sysext", "verify", s(&img), "--trust", s(&trust)]),
        "altered",
    );
}
