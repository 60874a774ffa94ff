//! `basalt disk …` end to end on a small image file: create, write-slot (with a tree made by
//! `veritysetup`, package `cryptsetup-bin`), inspect (text and JSON), gptprio transitions, and
//! the refusals (booted slot, oversize image) with exit code 3.

use std::path::Path;
use std::process::{Command, Output};

fn basalt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args(args)
        .output()
        .expect("run basalt")
}

fn ok(args: &[&str]) -> String {
    let out = basalt(args);
    assert!(
        out.status.success(),
        "basalt {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn veritysetup_format(data: &Path, hash: &Path) -> String {
    let out = Command::new("veritysetup")
        .arg("format")
        .arg(data)
        .arg(hash)
        .output()
        .expect("veritysetup not runnable; install the Debian package `cryptsetup-bin`");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_string())
        .expect("root hash in veritysetup output")
}

#[test]
fn disk_commands_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let i = img.to_str().unwrap();
    ok(&[
        "disk",
        "create",
        i,
        "--size",
        "8M",
        "--esp-size",
        "1M",
        "--usr-size",
        "1M",
        "--verity-size",
        "64K",
        "--reserve-size",
        "512K",
        "--align",
        "64K",
    ]);
    // Refuses to overwrite an existing file.
    assert_eq!(
        basalt(&["disk", "create", i, "--size", "8M"]).status.code(),
        Some(1)
    );

    let data = dir.path().join("usr.img");
    let tree = dir.path().join("usr.verity");
    std::fs::write(&data, vec![0x5au8; 256 << 10]).unwrap();
    let hash = veritysetup_format(&data, &tree);
    let (d, t) = (data.to_str().unwrap(), tree.to_str().unwrap());
    ok(&[
        "disk",
        "write-slot",
        i,
        "--slot",
        "a",
        "--data",
        d,
        "--verity",
        t,
        "--root-hash",
        &hash,
        "--version",
        "1.0.0",
    ]);
    ok(&["disk", "gptprio", i, "mark-good", "--slot", "a"]);

    // Booted slot A: writing A is refused with exit code 3.
    let cmdline = format!("ro usrhash={hash}");
    let out = basalt(&[
        "disk",
        "write-slot",
        i,
        "--slot",
        "a",
        "--data",
        d,
        "--verity",
        t,
        "--root-hash",
        &hash,
        "--version",
        "1.0.1",
        "--cmdline",
        &cmdline,
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Oversize image: refused with exit code 3.
    let big = dir.path().join("big.img");
    std::fs::write(&big, vec![1u8; 2 << 20]).unwrap();
    let out = basalt(&[
        "disk",
        "write-slot",
        i,
        "--slot",
        "b",
        "--data",
        big.to_str().unwrap(),
        "--verity",
        t,
        "--root-hash",
        &"12".repeat(32),
        "--version",
        "2.0.0",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Slot B gets another image and is staged; one boot attempt boots it.
    std::fs::write(&data, vec![0xa5u8; 128 << 10]).unwrap();
    let hash_b = veritysetup_format(&data, &tree);
    ok(&[
        "disk",
        "write-slot",
        i,
        "--slot",
        "b",
        "--data",
        d,
        "--verity",
        t,
        "--root-hash",
        &hash_b,
        "--version",
        "2.0.0",
        "--cmdline",
        &cmdline,
    ]);
    let staged = ok(&["disk", "gptprio", i, "stage", "--slot", "b", "--tries", "2"]);
    assert!(staged.contains("next boot: B"), "{staged}");
    let booted = ok(&["disk", "gptprio", i, "boot-attempt"]);
    assert!(booted.contains("booted slot B"), "{booted}");

    let json = ok(&["disk", "inspect", i, "--cmdline", &cmdline, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["booted"], "A");
    assert_eq!(v["next_boot"]["gptprio"], "B");
    assert_eq!(v["gpt"]["primary"], "valid");
    assert_eq!(v["slots"][0]["state"], "active");
    assert_eq!(v["slots"][0]["root_hash"], hash.as_str());
    assert_eq!(v["slots"][1]["version"], "2.0.0");
    assert_eq!(v["slots"][1]["gptprio"]["tries"], 1);
    assert_eq!(v["partitions"].as_array().unwrap().len(), 6);

    let text = ok(&["disk", "inspect", i]);
    assert!(text.contains("slot B: valid 2.0.0"), "{text}");
    assert!(text.contains("next boot (gptprio): B"), "{text}");

    // Cancel the staged B: A is next again; cancelling A (good) is refused with exit code 3.
    let out = ok(&["disk", "gptprio", i, "cancel", "--slot", "b"]);
    assert!(out.contains("next boot: A"), "{out}");
    assert_eq!(
        basalt(&["disk", "gptprio", i, "cancel", "--slot", "a"])
            .status
            .code(),
        Some(3)
    );
}
