//! `dist/systemd/basalt-updated.service` checked by systemd itself: `systemd-analyze verify`
//! (syntax, known directives, the executable exists) and `systemd-analyze security --offline`
//! (the sandbox keeps the exposure score low). Peer: package `systemd`; the test fails naming
//! it when missing.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::Path;
use std::process::Command;

fn unit_copy(dir: &Path) -> std::path::PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(repo.join("dist/systemd/basalt-updated.service")).unwrap();
    assert!(text.contains("ExecStart=/usr/bin/basalt-updated\n"));
    // The built binary stands in for the installed one (verify checks that it exists).
    let text = text.replace(
        "ExecStart=/usr/bin/basalt-updated",
        &format!("ExecStart={}", env!("CARGO_BIN_EXE_basalt-updated")),
    );
    let path = dir.join("basalt-updated.service");
    std::fs::write(&path, text).unwrap();
    path
}

fn analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze: {e} (apt-get install systemd)"))
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path());
    let out = analyze(&["verify", unit.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {err}");
    assert!(err.trim().is_empty(), "warnings: {err}");
}

#[test]
fn the_sandbox_keeps_the_exposure_low() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path());
    let out = analyze(&[
        "security",
        "--offline=yes",
        "--no-pager",
        unit.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no score in: {text}"));
    // "→ Overall exposure level for basalt-updated.service: 2.5 OK"
    let score: f64 = line
        .rsplit(": ")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(score <= 3.0, "exposure {score} (> 3.0): {line}");
}

#[test]
fn the_unit_keeps_its_contract() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(repo.join("dist/systemd/basalt-updated.service")).unwrap();
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "ProtectSystem=strict",
        "StateDirectory=basalt basalt/updater",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_SYS_ADMIN",
        "DevicePolicy=closed",
        "PrivateNetwork=no",
        "systemd-bless-boot.service",
    ] {
        assert!(text.contains(needed), "the unit lost {needed}");
    }
}

/// `dist/systemd/basalt-extensions.service`: systemd accepts it (with the built `basaltctl`
/// standing in), and it keeps its contract: early (no D-Bus), before the agent, after /var,
/// and only when there is a set to activate or adopt.
#[test]
fn systemd_analyze_verify_accepts_the_extensions_unit() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text =
        std::fs::read_to_string(repo.join("dist/systemd/basalt-extensions.service")).unwrap();
    for line in [
        "ExecStart=/usr/bin/basaltctl extensions activate\n",
        "DefaultDependencies=no\n",
        "After=local-fs.target systemd-sysext.service\n",
        "Before=sysinit.target basalt-updated.service shutdown.target\n",
        // Runs when a set is staged or the node image brought one to adopt.
        "ConditionDirectoryNotEmpty=|/var/lib/basalt/extensions\n",
        "ConditionDirectoryNotEmpty=|/.basalt-extensions\n",
    ] {
        assert!(text.contains(line), "{line}");
    }
    let text = text.replace(
        "ExecStart=/usr/bin/basaltctl",
        &format!("ExecStart={}", env!("CARGO_BIN_EXE_basaltctl")),
    );
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("basalt-extensions.service");
    std::fs::write(&unit, text).unwrap();
    let out = analyze(&["verify", unit.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {err}");
    assert!(err.trim().is_empty(), "warnings: {err}");
}
