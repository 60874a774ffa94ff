//! The product image boots: OVMF → systemd-boot (slot-A entry) → the Debian kernel →
//! basalt-init (signed usrhash, dm-verity `/usr`, root ext4, factory `/etc`) → switch_root →
//! systemd → multi-user.target with containerd running. One QEMU run of
//! `image/definitions/container-host.toml`, built with the test keys (cached by input hash:
//! the first build runs mmdebstrap, ≈1–2 min; later runs copy files).
//!
//! The image carries `basalt-boot-report.service`, inert unless the kernel command line has
//! `basalt.test=report`; the test adds that option to the boot entry of its private disk copy.
//! The unit waits for the boot to finish, prints one `BASALT-REPORT:` line (systemd state,
//! containerd, the `/usr` mount …) and powers off.
//!
//! Prints the boot figures (not asserted: TCG timing varies with the host's load): QEMU start →
//! multi-user.target (QEMU start → the kernel's first console line, plus systemd's own
//! timestamp of multi-user.target since kernel start: systemd prints no `Reached target` line
//! once the serial getty owns the console), basalt-init's figure (kernel start → switch_root)
//! and QEMU start → the report line.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use basalt_image::build::rootfs::REPORT_OPTION;
use basalt_tests::artifacts::{add_kernel_option, container_host_image};
use basalt_tests::vm::{scenario_dir, VmConfig};

/// Per-step bound (scaled by `BASALT_VM_TIMEOUT_FACTOR` in the harness). The whole boot takes
/// ≈20–35 s on an idle 2-vCPU TCG host.
const STEP: Duration = Duration::from_secs(150);

/// The fields of a `BASALT-REPORT: k=v k=v …` line.
fn parse_report(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The rest of the console line after the first `marker`. Only call it once a later marker
/// has been seen: right after `expect(marker)` the rest of that line may not have arrived.
fn rest_of_line(console: &str, marker: &str) -> String {
    console
        .split_once(marker)
        .and_then(|(_, after)| after.lines().next())
        .unwrap_or_default()
        .trim_end_matches('\r')
        .to_owned()
}

struct Boot {
    /// QEMU start → the kernel's first line (firmware and systemd-boot).
    kernel_at: Duration,
    /// QEMU start → the report line (after multi-user.target and `is-system-running --wait`).
    report_at: Duration,
    switch_root_line: String,
    report: HashMap<String, String>,
    time_line: String,
    serial_log: std::path::PathBuf,
}

fn boot_once(config: &VmConfig) -> Result<Boot> {
    let mut vm = config.spawn()?;
    let kernel_at = vm.expect("Linux version", STEP)?;
    vm.expect("basalt-init: usrhash is signed", STEP)?;
    vm.expect("basalt-init: dm-verity usr status V", STEP)?;
    vm.expect("basalt-init: switching root to /sysroot", STEP)?;
    // systemd stops printing its status lines (`Reached target …`) once the serial getty owns
    // the console, before multi-user.target: the report line is the console marker, and
    // systemd's own timestamp of multi-user.target (guest clock) is in the report.
    let report_at = vm.expect("BASALT-REPORT: system=", STEP)?;
    vm.expect("BASALT-REPORT: done, powering off", STEP)?;
    vm.expect_poweroff(STEP)?;
    let console = vm.console();
    let switch_root_line = rest_of_line(&console, "basalt-init: switching root to /sysroot");
    let report = parse_report(&format!(
        "system={}",
        rest_of_line(&console, "BASALT-REPORT: system=")
    ));
    let time_line = rest_of_line(&console, "BASALT-REPORT-TIME: ");
    Ok(Boot {
        kernel_at,
        report_at,
        switch_root_line,
        report,
        time_line,
        serial_log: vm.serial_log().to_path_buf(),
    })
}

#[test]
fn container_host_image_boots_to_multi_user_with_containerd() -> Result<()> {
    let image = container_host_image()?;
    println!(
        "container-host image: {} (cache {}, build {:.1} s{})",
        image.dir.display(),
        image.report.cache_dir.display(),
        image.report.elapsed.as_secs_f64(),
        if image.report.from_cache {
            ", from the cache"
        } else {
            ""
        }
    );
    let dir = scenario_dir("boot-container-host")?;
    let config_for = |disk: &std::path::Path| {
        VmConfig::uefi(&dir)
            .disk(disk)
            .memory_mib(1536)
            .cpus(2)
            .cpu_model("qemu64,+rdrand")
            .no_reboot(true)
    };
    // Boot a private copy (the guest writes /etc and /var on its first boot). One retry on a
    // hang or an early exit: `-smp 2` under TCG stalled once in the RNG (environment notes);
    // the retry gets a fresh disk copy, so it is a first boot again.
    let mut attempt = 0;
    let boot = loop {
        attempt += 1;
        let disk = dir.join(format!("disk-{attempt}.img"));
        image.copy_disk(&disk)?;
        let changed = add_kernel_option(&disk, REPORT_OPTION)?;
        ensure!(
            !changed.is_empty(),
            "no boot entry on the ESP of {}",
            disk.display()
        );
        match boot_once(&config_for(&disk)) {
            Ok(boot) => break boot,
            Err(e) if attempt < 2 => {
                println!("attempt {attempt} failed, retrying once: {e:#}");
                std::fs::remove_file(&disk).ok();
            }
            Err(e) => return Err(e).context("container-host boot failed twice"),
        }
    };

    let r = &boot.report;
    println!("report: {r:?}");
    println!("systemd-analyze: {}", boot.time_line);
    let field = |k: &str| r.get(k).map(String::as_str).unwrap_or("");
    ensure!(field("containerd") == "active", "containerd: {r:?}");
    ensure!(field("usr").starts_with("erofs,ro"), "/usr mount: {r:?}");
    ensure!(field("root").starts_with("ext4"), "/ mount: {r:?}");
    ensure!(field("version") == "1.0.0", "os-release: {r:?}");
    ensure!(
        field("machine-id").len() == 32,
        "machine-id not generated: {r:?}"
    );
    ensure!(field("var") == "factory", "/var not populated: {r:?}");
    ensure!(
        field("entry").starts_with("basalt-1.0.0"),
        "systemd-boot entry: {r:?}"
    );
    if field("system") != "running" {
        bail!(
            "system is {:?}, failed units: {} (serial log {})",
            field("system"),
            field("failed"),
            boot.serial_log.display()
        );
    }
    // "… (3.4 s since kernel start)" → 3.4
    let init_secs = boot
        .switch_root_line
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
        .with_context(|| format!("switch_root line: {:?}", boot.switch_root_line))?;
    let multi_user_s: f64 = field("multi-user-s")
        .parse()
        .with_context(|| format!("multi-user-s in {r:?}"))?;
    println!(
        "boot figures: QEMU start → multi-user.target ≈ {:.1} s (QEMU start → kernel {:.1} s + \
         kernel start → multi-user.target {multi_user_s:.1} s, systemd's figure); \
         kernel start → switch_root (basalt-init's figure): {init_secs:.1} s; \
         QEMU start → report line: {:.1} s; attempts: {attempt}; serial log {}",
        boot.kernel_at.as_secs_f64() + multi_user_s,
        boot.kernel_at.as_secs_f64(),
        boot.report_at.as_secs_f64(),
        boot.serial_log.display()
    );
    Ok(())
}
