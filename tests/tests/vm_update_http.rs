//! The update agent on a real node, over HTTP: the container-host **test** image 1.0.0 boots
//! under OVMF + systemd-boot (real boot counting) with a restricted user-mode NIC whose only
//! reachable address, `http://10.0.2.100/`, is forwarded to an nginx on 127.0.0.1 serving a
//! repository made with `basalt release publish`. The steps are `basalt_tests::story::
//! http_update` (the same ones `cargo xtask demo` runs), which checks each expectation on
//! `basaltctl … --json`:
//!
//! 1. The operator names the repository; `basaltctl update --reboot` downloads 2.0.0 (with
//!    progress), stages it, reboots; systemd-boot boots 2.0.0 on trial; the agent's health gate
//!    passes; `basaltctl status --json` shows 2.0.0 booted and blessed, the history a commit.
//! 2. 3.0.0 (a health check that can never pass) is published; update + reboot; 3.0.0 boots
//!    on trial, the gate fails at its deadline, the agent marks the slot bad and reboots;
//!    2.0.0 boots again; `basaltctl history --json` shows the rollback from 3.0.0 to 2.0.0
//!    with the failed check as its reason.
//!
//! Here, after power-off: the ESP (read on the host by basalt-disk and by mtools) holds
//! 2.0.0's entry without a boot counter (blessed by the agent, not by systemd) and 3.0.0's
//! entry still counted (never blessed).
//!
//! Four boots (≈25–40 s each under TCG; each its own QEMU run, see `Node`) and two downloads
//! over the guest NIC.

use std::time::Instant;

use anyhow::{ensure, Result};
use basalt_tests::scenario::{entry_files, entry_files_mtools};
use basalt_tests::story::{build_releases, http_update, Stderr};
use basalt_tests::vm::scenario_dir;

#[test]
fn update_over_http_commits_then_rolls_back_a_failing_health_check() -> Result<()> {
    let started = Instant::now();
    let n = &mut Stderr;
    let releases = build_releases(n)?;
    let built = started.elapsed();
    let dir = scenario_dir("vm-update-http")?;
    let outcome = http_update(&releases, &dir, n)?;

    ensure!(
        outcome.committed["last_error"]["name"] == "",
        "a committed update leaves no error: {:#}",
        outcome.committed
    );
    ensure!(
        outcome.rolled_back["state"] != "failed",
        "{:#}",
        outcome.rolled_back
    );
    let kinds: Vec<&str> = outcome
        .history
        .iter()
        .filter_map(|h| h["kind"].as_str())
        .collect();
    ensure!(
        kinds.contains(&"committed") && kinds.contains(&"rolled-back"),
        "history kinds {kinds:?}"
    );

    let ours = entry_files(&outcome.disk)?;
    let peer = entry_files_mtools(&outcome.disk)?;
    ensure!(ours == peer, "basalt-disk {ours:?} vs mtools {peer:?}");
    ensure!(
        ours.iter().any(|e| e.contains("2.0.0") && !e.contains('+')),
        "2.0.0's entry should be blessed (no counter): {ours:?}"
    );
    ensure!(
        !ours.iter().any(|e| e.contains("3.0.0") && !e.contains('+')),
        "3.0.0's entry must never be blessed: {ours:?}"
    );
    ensure!(outcome.requests > 0, "nginx served nothing");
    println!(
        "vm_update_http: releases ready in {:.0} s; VM {:.0} s (2.0.0 committed at {:.0} s); \
         total {:.0} s; {} HTTP requests; ESP entries {ours:?}",
        built.as_secs_f64(),
        outcome.vm_time.as_secs_f64(),
        outcome.committed_at.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        outcome.requests,
    );
    Ok(())
}
