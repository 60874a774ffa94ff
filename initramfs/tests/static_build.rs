//! `basalt-init` links statically with the documented command (glibc static-pie; the musl
//! target is not installed here), checked with `file` (package `file`).

mod common;

use std::process::Command;

use common::{peer_ok, workspace};

#[test]
fn basalt_init_builds_statically() {
    let target_dir = workspace().join("target");
    let st = Command::new(env!("CARGO"))
        .current_dir(workspace())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args([
            "build",
            "--release",
            "-p",
            "basalt-initramfs",
            "--bin",
            "basalt-init",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .status()
        .unwrap();
    assert!(st.success(), "static release build failed");
    let bin = target_dir.join("x86_64-unknown-linux-gnu/release/basalt-init");
    let out = peer_ok("file", "file", &["-L", bin.to_str().unwrap()], None);
    assert!(
        out.contains("statically linked") || out.contains("static-pie linked"),
        "{out}"
    );
    assert!(!out.contains("dynamically linked"), "{out}");
    // No interpreter: the kernel can exec it from an initramfs without ld.so.
    let ldd = Command::new("ldd").arg(&bin).output().unwrap();
    let text =
        String::from_utf8_lossy(&ldd.stdout).to_string() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(
        text.contains("not a dynamic executable") || text.contains("statically linked"),
        "{text}"
    );
}
