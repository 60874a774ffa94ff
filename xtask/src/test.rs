//! `cargo xtask test`: what CI runs, and what a newcomer runs on a fresh Debian machine.

use std::process::Command;

use anyhow::{Context, Result};
use clap::Parser;

use crate::sh;

/// Debian packages the tests use as peers and guests (see docs/DEVELOPMENT.md).
pub const APT_PACKAGES: &[&str] = &[
    "cryptsetup-bin",
    "gdisk",
    // fdisk: also the GPT peer of basalt-identity at 4096-byte sectors (identity/tests).
    "fdisk",
    "cgpt",
    "mtools",
    "dosfstools",
    "erofs-utils",
    "squashfs-tools",
    "e2fsprogs",
    "kmod",
    "busybox-static",
    "cpio",
    "file",
    "zstd",
    "xz-utils",
    "qemu-system-x86",
    "ovmf",
    "systemd-boot-efi",
    "dbus",
    // systemd-analyze verifies dist/systemd/basalt-updated.service (updater/tests/systemd_unit.rs).
    "systemd",
    // Named time zones of the updater's maintenance window (updater/src/config.rs).
    "tzdata",
    // systemd-dissect reads our system extension images as a peer (image/tests/sysext_peers.rs).
    "systemd-container",
    "mmdebstrap",
    "gpgv",
    "debian-archive-keyring",
    "openssl",
    // sbsign/sbverify: signing UKIs and systemd-boot for Secure Boot (image, tests).
    "sbsigntool",
    // cert-to-efi-sig-list, sign-efi-sig-list: Secure Boot key enrolment files.
    "efitools",
    // objdump: the PE peer of the UKI builder (image/tests/uki_peers.rs).
    "binutils",
    // The HTTP source's peers (tests/src/web.rs): a real web server, a forward proxy, and
    // curl for `cargo xtask bench`.
    "nginx-light",
    "tinyproxy",
    // The update VM scenarios' guest NIC: QEMU's guestfwd runs one socat per connection to
    // nginx on 127.0.0.1 (tests/src/story.rs).
    "socat",
    "curl",
    // basalt-rollout: a private PostgreSQL for the two-replica tests, headless Chromium for
    // the status page, wrk for `cargo xtask bench --only rollout`.
    "postgresql",
    "chromium",
    "wrk",
    // verity/tests/dm_kernel_header.rs compiles a C probe of <linux/dm-ioctl.h>.
    "gcc",
    "linux-libc-dev",
    // The image SBOM's validator (pyspdxtools, pip-installed into build/cache/spdx-tools) and
    // the git revision of the Basalt binaries an image carries.
    "python3-venv",
    "git",
];

#[derive(Debug, Parser)]
pub struct Args {
    /// Skip the apt-get step (packages already installed by hand).
    #[arg(long)]
    no_install: bool,
    /// Skip the short fuzz pass.
    #[arg(long)]
    no_fuzz: bool,
    /// Seconds each fuzz target runs.
    #[arg(long, default_value_t = 20)]
    fuzz_seconds: u32,
}

pub fn run(args: Args) -> Result<()> {
    let root = sh::root();
    if !args.no_install {
        install_packages()?;
    }
    sh::run(
        Command::new("cargo")
            .current_dir(&root)
            .args(["fmt", "--all", "--check"]),
    )?;
    sh::run(Command::new("cargo").current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    sh::run(
        Command::new("cargo")
            .current_dir(&root)
            // Every test binary runs even after a failure: one CI run shows every red test.
            .args(["test", "--workspace", "--no-fail-fast"]),
    )?;
    if !args.no_fuzz {
        fuzz(args.fuzz_seconds)?;
    }
    eprintln!("xtask test: all checks passed");
    Ok(())
}

fn missing_packages() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            let ok = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", pkg])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false);
            !ok
        })
        .collect()
}

pub fn install_packages() -> Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask test: installing missing packages: {}",
        missing.join(" ")
    );
    // Another session's apt-get (sessions share the machine) holds dpkg's lock for a while:
    // wait for it instead of failing the whole command.
    const LOCK_WAIT: &str = "DPkg::Lock::Timeout=600";
    sh::run(Command::new("apt-get").args(["-o", LOCK_WAIT, "update", "-qq"]))
        .context("apt-get update (the test command runs as root on a Debian machine)")?;
    sh::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args([
                "-o",
                LOCK_WAIT,
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
            ])
            .args(&missing),
    )
}

/// Fuzz targets: (crate folder, target name).
const FUZZ_TARGETS: &[(&str, &str)] = &[
    ("verity", "superblock"),
    ("manifests", "envelope"),
    ("manifests", "frame_index"),
    ("disk", "gpt"),
    ("disk", "bls_entry"),
    ("initramfs", "boot_inputs"),
    ("updater", "http_headers"),
    ("identity", "gpt"),
    ("identity", "text"),
    ("updater", "config_fragment"),
    ("updater", "status_file"),
];

fn fuzz(seconds: u32) -> Result<()> {
    if FUZZ_TARGETS.is_empty() {
        return Ok(());
    }
    if !sh::have("cargo-fuzz") {
        sh::run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
    }
    let root = sh::root();
    for (dir, target) in FUZZ_TARGETS {
        // A scratch corpus (gitignored) seeded from the committed seeds, when there are any.
        let fuzz_dir = root.join(dir).join("fuzz");
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root.join(dir))
            .args(["+nightly", "fuzz", "run", target])
            // One target folder for every fuzz crate: their common dependencies (ring, serde,
            // gptman …) are built once with the sanitizer flags, not once per crate.
            .arg("--target-dir")
            .arg(root.join("target").join("fuzz"))
            .arg(&corpus);
        let seeds = fuzz_dir.join("seeds").join(target);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        sh::run(cmd.arg("--").arg(format!("-max_total_time={seconds}")))?;
    }
    Ok(())
}
