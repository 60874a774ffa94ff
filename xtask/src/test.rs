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
    #[arg(long, default_value_t = 10)]
    fuzz_seconds: u32,
    /// One `cargo test --workspace`, one test binary after the other, then the fuzz pass,
    /// instead of the two lanes (slower: ≈ 1.4× on 2 cores; for telling whether a failure
    /// needs another test running beside it).
    #[arg(long)]
    serial: bool,
    /// Build the test binaries, print which lane runs each, and stop.
    #[arg(long)]
    list_lanes: bool,
}

/// The test binaries (of `basalt-tests`) that make the `vm` lane: the container-host
/// scenarios (they build and boot the container-host images, one after the other on a shared
/// cache) and the Secure Boot one; every other test binary — the minimal-image boots, the
/// image build checks, every other package's tests —, the doc tests and the fuzz pass make the
/// `host` lane.
///
/// Why lanes: run one after the other, the test binaries leave a core idle much of the time
/// (a TCG guest waiting on a timer, `mkfs.erofs`, mmdebstrap fetching), so two lanes run
/// beside each other. Every binary is built once (`cargo test --workspace --no-run`: the
/// features are unified over the whole workspace exactly as in a serial run) and run as
/// `cargo test` runs it (its package folder as the working directory, its own test threads);
/// only the lanes overlap. The split balances measured times (docs/DEVELOPMENT.md: a cold run
/// on 2 cores, 2026-12-03): the vm lane ≈ 37 min, the host lane ≈ 33 min.
const VM_LANE: (&str, &[&str]) = (
    "basalt-tests",
    &[
        "tests/boot_container_host.rs",
        "tests/boot_secure.rs",
        "tests/vm_extensions.rs",
        "tests/vm_fleet.rs",
        "tests/vm_update_file.rs",
        "tests/vm_update_http.rs",
    ],
);

/// Whether `b` runs in the vm lane (see [`VM_LANE`]).
fn in_vm_lane(b: &TestBinary) -> bool {
    b.package == VM_LANE.0 && VM_LANE.1.contains(&b.label.as_str())
}

pub fn run(args: Args) -> Result<()> {
    let root = sh::root();
    if args.list_lanes {
        return run_in_lanes(&root, &args);
    }
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
    if args.serial {
        sh::run(
            Command::new("cargo")
                .current_dir(&root)
                .env(
                    basalt_tests::artifacts::PREBUILT_BIN_DIR_ENV,
                    debug_bin_dir(&root),
                )
                // Every test binary runs even after a failure: one CI run shows every red test.
                .args(["test", "--workspace", "--no-fail-fast"]),
        )?;
        if !args.no_fuzz {
            fuzz(args.fuzz_seconds, None)?;
        }
    } else {
        run_in_lanes(&root, &args)?;
    }
    eprintln!("xtask test: all checks passed");
    Ok(())
}

/// Where `cargo test --workspace` puts the packages' debug binaries (their integration tests
/// need them, so it builds them before any test runs): the QEMU scenarios take `basalt` and
/// `basalt-rollout` from there instead of building them again in a folder of their own.
fn debug_bin_dir(root: &std::path::Path) -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("debug")
}

/// One test executable as Cargo built it.
#[derive(Debug, Clone)]
struct TestBinary {
    package: String,
    /// `unittests <target>` or `tests/<name>.rs`-like, as Cargo prints it.
    label: String,
    path: std::path::PathBuf,
    /// The package's folder: Cargo runs test binaries there.
    dir: std::path::PathBuf,
}

/// `cargo test --workspace --no-run`, and the test executables it built.
fn build_test_binaries(root: &std::path::Path) -> Result<Vec<TestBinary>> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).args([
        "test",
        "--workspace",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    eprintln!("+ {}", sh::render(&cmd));
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot start cargo test --no-run")?;
    anyhow::ensure!(
        out.status.success(),
        "cargo test --workspace --no-run failed: {}",
        out.status
    );
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let Some(path) = msg["executable"].as_str() else {
            continue;
        };
        let manifest = msg["manifest_path"].as_str().unwrap_or_default();
        let dir = std::path::Path::new(manifest)
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_else(|| root.to_path_buf());
        let target = msg["target"]["name"].as_str().unwrap_or("?");
        let kind = msg["target"]["kind"][0].as_str().unwrap_or("?");
        let src = msg["target"]["src_path"].as_str().unwrap_or("?");
        let label = match kind {
            "test" | "bench" | "example" => src
                .strip_prefix(&format!("{}/", dir.display()))
                .unwrap_or(src)
                .to_owned(),
            _ => format!("unittests {target} ({kind})"),
        };
        // The package name is the id's last path part before '#' (`path+file:///…/x#name@v`
        // or `…/name#v`); the manifest's folder name is not always the package name.
        let id = msg["package_id"].as_str().unwrap_or_default();
        let package = id
            .rsplit_once('#')
            .map(|(head, tail)| match tail.split_once('@') {
                Some((name, _)) => name.to_owned(),
                None => head.rsplit('/').next().unwrap_or(head).to_owned(),
            })
            .unwrap_or_default();
        binaries.push(TestBinary {
            package,
            label,
            path: path.into(),
            dir,
        });
    }
    binaries.sort_by(|a, b| (&a.package, &a.label).cmp(&(&b.package, &b.label)));
    binaries.dedup_by(|a, b| a.path == b.path);
    anyhow::ensure!(!binaries.is_empty(), "cargo built no test binaries");
    Ok(binaries)
}

/// Runs `binaries` one after the other (all of them, failures collected), output prefixed
/// with `lane`; returns each one's wall time and whether it passed.
fn run_binaries(lane: &str, binaries: &[TestBinary]) -> Vec<(String, std::time::Duration, bool)> {
    binaries
        .iter()
        .map(|b| {
            let started = std::time::Instant::now();
            let mut cmd = Command::new(&b.path);
            cmd.current_dir(&b.dir);
            // Two lanes share the cores: a guest may boot up to twice as slowly as alone, so
            // its bounded waits get twice the time (they only bound how late a hang is
            // reported), unless the caller chose a factor.
            if std::env::var_os(basalt_tests::vm::TIMEOUT_FACTOR_ENV).is_none() {
                cmd.env(basalt_tests::vm::TIMEOUT_FACTOR_ENV, "2");
            }
            cmd.env(
                basalt_tests::artifacts::PREBUILT_BIN_DIR_ENV,
                debug_bin_dir(&sh::root()),
            );
            let name = format!("{} {}", b.package, b.label);
            eprintln!("[{lane}] Running {name}");
            let ok = match sh::run_prefixed(lane, &mut cmd) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("[{lane}] FAILED {name}: {e:#}");
                    false
                }
            };
            (name, started.elapsed(), ok)
        })
        .collect()
}

fn run_in_lanes(root: &std::path::Path, args: &Args) -> Result<()> {
    let binaries = build_test_binaries(root)?;

    let (vm, host): (Vec<TestBinary>, Vec<TestBinary>) = binaries.into_iter().partition(in_vm_lane);
    if args.list_lanes {
        for (lane, list) in [("host", &host), ("vm", &vm)] {
            for b in list {
                println!("{lane}\t{}\t{}\t{}", b.package, b.label, b.dir.display());
            }
        }
        return Ok(());
    }
    anyhow::ensure!(
        vm.len() == VM_LANE.1.len(),
        "the vm lane's test binaries {:?} of {} were not all built (found {:?})",
        VM_LANE.1,
        VM_LANE.0,
        vm.iter().map(|b| b.label.as_str()).collect::<Vec<_>>()
    );
    let started = std::time::Instant::now();
    let (host_runs, host_rest, vm_runs) = std::thread::scope(|scope| {
        let vm_lane = scope.spawn(|| run_binaries("vm", &vm));
        let host_runs = run_binaries("host", &host);
        // Doc tests (built here, by rustdoc) and the fuzz pass, still beside the vm lane.
        let mut doc = Command::new("cargo");
        doc.current_dir(root)
            .args(["test", "--workspace", "--doc", "--no-fail-fast"]);
        let docs = sh::run_prefixed("host", &mut doc).context("doc tests");
        let fuzzed = if args.no_fuzz {
            Ok(())
        } else {
            fuzz(args.fuzz_seconds, Some("host")).context("fuzz pass")
        };
        eprintln!(
            "xtask test: lane host done after {:.1} min",
            started.elapsed().as_secs_f64() / 60.0
        );
        let vm_runs = vm_lane.join().unwrap_or_default();
        (host_runs, docs.and(fuzzed), vm_runs)
    });
    eprintln!(
        "xtask test: lane vm done; both lanes took {:.1} min. Slowest test binaries:",
        started.elapsed().as_secs_f64() / 60.0
    );
    let mut all: Vec<&(String, std::time::Duration, bool)> =
        host_runs.iter().chain(vm_runs.iter()).collect();
    all.sort_by_key(|r| std::cmp::Reverse(r.1));
    for (name, took, ok) in all.iter().take(15) {
        eprintln!(
            "  {:>7.1} s  {name}{}",
            took.as_secs_f64(),
            if *ok { "" } else { "  FAILED" }
        );
    }
    let mut failed: Vec<String> = all.iter().filter(|r| !r.2).map(|r| r.0.clone()).collect();
    if vm_runs.len() != vm.len() {
        failed.push("the vm lane stopped early".into());
    }
    if let Err(e) = host_rest {
        failed.push(format!("{e:#}"));
    }
    if !failed.is_empty() {
        anyhow::bail!("xtask test: failed:\n  {}", failed.join("\n  "));
    }
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

/// The short fuzz pass; with `lane`, its output lines are marked as that lane's.
fn fuzz(seconds: u32, lane: Option<&str>) -> Result<()> {
    if FUZZ_TARGETS.is_empty() {
        return Ok(());
    }
    let run = |cmd: &mut Command| match lane {
        Some(l) => sh::run_prefixed(l, cmd),
        None => sh::run(cmd),
    };
    if !sh::have("cargo-fuzz") {
        run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
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
        run(cmd.arg("--").arg(format!("-max_total_time={seconds}")))?;
    }
    Ok(())
}
