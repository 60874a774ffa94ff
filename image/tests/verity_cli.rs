//! The `basalt verity` CLI against the real `veritysetup` (Debian package `cryptsetup-bin`):
//! same printed facts, byte-identical hash files, verify exit codes 0 / 3.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const UUID: &str = "6a1c5e0b-7d3f-4c2a-9e81-0b2c4d6e8fa0";

fn basalt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args(args)
        .output()
        .expect("run basalt")
}

fn veritysetup(args: &[&str]) -> Output {
    let bin = ["/usr/sbin/veritysetup", "/sbin/veritysetup"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("veritysetup not found: install the Debian package `cryptsetup-bin`")
        });
    Command::new(bin)
        .args(args)
        .output()
        .expect("run veritysetup")
}

fn random_file(path: &Path, len: usize) {
    let mut buf = vec![0u8; len];
    File::open("/dev/urandom")
        .expect("urandom")
        .read_exact_at(&mut buf, 0)
        .expect("read urandom");
    fs::write(path, buf).expect("write data");
}

fn flip(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).expect("read");
    b[0] ^= 1;
    f.write_all_at(&b, offset).expect("write");
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(o: Output, what: &str) -> Output {
    assert!(
        o.status.success(),
        "{what} failed: {}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The `Key: value` facts of a veritysetup-style report (the header line and veritysetup's
/// extra "Hash device size" dropped).
fn facts(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| k != "Hash device size")
        .collect()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn format_prints_and_writes_what_veritysetup_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    random_file(&data, 300 * 4096 + 17);
    let (ours, theirs): (PathBuf, PathBuf) = (dir.path().join("ours"), dir.path().join("theirs"));
    let salt = "00112233445566778899";
    let o = ok(
        basalt(&[
            "verity",
            "format",
            p(&data),
            p(&ours),
            "--salt",
            salt,
            "--uuid",
            UUID,
        ]),
        "basalt verity format",
    );
    let t = ok(
        veritysetup(&[
            "format",
            p(&data),
            p(&theirs),
            "--salt",
            salt,
            "--uuid",
            UUID,
        ]),
        "veritysetup format",
    );
    assert_eq!(facts(&stdout(&o)), facts(&stdout(&t)));
    assert!(fs::read(&ours).expect("read") == fs::read(&theirs).expect("read"));

    let root = facts(&stdout(&o))
        .into_iter()
        .find(|(k, _)| k == "Root hash")
        .map(|(_, v)| v)
        .expect("root hash");
    ok(
        basalt(&["verity", "verify", p(&data), p(&theirs), &root]),
        "basalt verify",
    );
    ok(
        veritysetup(&["verify", p(&data), p(&ours), &root]),
        "veritysetup verify",
    );

    // One flipped data byte in block 123: exit 3 naming the block.
    flip(&data, 123 * 4096 + 9);
    let v = basalt(&["verity", "verify", p(&data), p(&ours), &root]);
    assert_eq!(
        v.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(String::from_utf8_lossy(&v.stderr).contains("data block 123"));
    assert!(!veritysetup(&["verify", p(&data), p(&ours), &root])
        .status
        .success());
    flip(&data, 123 * 4096 + 9);

    // One flipped byte in the second hash block (level 0, block 1 of the tree).
    flip(&ours, 4096 + 2 * 4096 + 40);
    let v = basalt(&["verity", "verify", p(&data), p(&ours), &root]);
    assert_eq!(v.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&v.stderr).contains("hash block 2"));
    flip(&ours, 4096 + 2 * 4096 + 40);

    // A wrong root hash is a refusal too; a malformed one is a usage failure (1).
    let wrong = format!(
        "{}{}",
        &root[..63],
        if root.ends_with('0') { "1" } else { "0" }
    );
    assert_eq!(
        basalt(&["verity", "verify", p(&data), p(&ours), &wrong])
            .status
            .code(),
        Some(3)
    );
    assert_eq!(
        basalt(&["verity", "verify", p(&data), p(&ours), "abc"])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(basalt(&["verity", "frobnicate"]).status.code(), Some(2));
}

#[test]
fn json_default_salt_and_appended_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("disk");
    random_file(&data, 77 * 4096);

    // Default: a random 32-byte salt and a superblock, in a separate file.
    let hash = dir.path().join("hash");
    let o = ok(
        basalt(&["verity", "format", p(&data), p(&hash), "--json"]),
        "format --json",
    );
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(j["salt"].as_str().map(str::len), Some(64));
    assert_eq!(j["data_blocks"], 77);
    assert_eq!(j["hash_blocks"], 1);
    assert_eq!(j["hash_offset"], 0);
    let root = j["root_hash"].as_str().expect("root").to_string();
    ok(
        veritysetup(&["verify", p(&data), p(&hash), &root]),
        "veritysetup verify (random salt)",
    );

    // Appended to the data file itself, no superblock, no salt.
    let off = (77 * 4096).to_string();
    let o = ok(
        basalt(&[
            "verity",
            "format",
            p(&data),
            p(&data),
            "--no-salt",
            "--no-superblock",
            "--hash-offset",
            &off,
            "--data-blocks",
            "77",
            "--json",
        ]),
        "appended format",
    );
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(j["salt"], "");
    assert_eq!(j["hash_start_block"], 77);
    let root = j["root_hash"].as_str().expect("root").to_string();
    let common = [
        "--no-superblock",
        "--salt",
        "-",
        "--hash-offset",
        &off,
        "--data-blocks",
        "77",
    ];
    let mut args = vec!["verity", "verify", p(&data), p(&data), &root];
    args.extend(common);
    ok(basalt(&args), "basalt verify appended");
    let mut vargs = vec!["verify", p(&data), p(&data), &root];
    vargs.extend(common);
    ok(veritysetup(&vargs), "veritysetup verify appended");
    flip(&data, 5);
    assert_eq!(basalt(&args).status.code(), Some(3));
    assert!(!veritysetup(&vargs).status.success());
}
