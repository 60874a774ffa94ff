//! The exact bytes the pipeline writes boot: the real `minimal` images (erofs `/usr`, Debian
//! kernel, basalt-init), release 2.0.0 published with `basalt release publish`, installed by
//! `NodeEngine` (check → download → apply) into slot B of release 1.0.0's disk image, then
//! booted under OVMF + systemd-boot in QEMU (TCG): systemd-boot picks the staged entry,
//! basalt-init finds slot B by the UUIDs derived from `usrhash=`, checks the usr-hash
//! statement the engine wrote after the tree, sets up dm-verity, and the 2.0.0 userspace
//! comes up. After the boot the engine sees slot B booted and on trial, and blesses it.
//!
//! One VM boot (≈10–15 s idle under TCG; `BASALT_VM_TIMEOUT_FACTOR` scales the timeouts).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use basalt_disk::{BootStatus, Slot, SlotState};
use basalt_image::release::{publish, publish_root, CompressOptions, PublishRequest};
use basalt_manifest::chrono::{TimeDelta, Utc};
use basalt_manifest::SigningKey;
use basalt_tests::artifacts::minimal_image;
use basalt_tests::vm::{scenario_dir, VmConfig};
use basalt_updater::engine::{CancelFlag, CheckOutcome, CheckRequest, Engine};
use basalt_updater::pipeline::{BackendKind, EngineConfig, EspLocation, NodeEngine};
use basalt_updater::source::FileSource;

const BOOT: Duration = Duration::from_secs(180);
const STEP: Duration = Duration::from_secs(60);
const V2_UP: &str = "BASALT-MINIMAL: userspace up, version=2.0.0";
const V1_UP: &str = "BASALT-MINIMAL: userspace up, version=1.0.0";

#[test]
fn an_update_installed_by_the_engine_boots() -> Result<()> {
    let v1 = minimal_image("1.0.0")?;
    let v2 = minimal_image("2.0.0")?;
    let dir = scenario_dir("update-engine")?;
    let disk = dir.join("disk.img");
    v1.copy_disk(&disk)?;

    // The repository: the test trust root, release 2.0.0 published on `stable`.
    let repo = dir.join("repo");
    let trust = std::fs::read(&v2.keys.trust)?;
    publish_root(&repo, &v2.keys.trust, &trust)?;
    let key = SigningKey::from_pem(&std::fs::read_to_string(&v2.keys.key)?)?;
    publish(&PublishRequest {
        release_dir: &v2.dir,
        repo: &repo,
        channel: "stable",
        keys: std::slice::from_ref(&key),
        sequence: None,
        allow_downgrade: false,
        now: Utc::now(),
        valid_for: Some(TimeDelta::days(30)),
        // Level 3: this test is about the install, not the compression ratio.
        compress: CompressOptions {
            level: 3,
            frame_len: basalt_manifest::frames::DEFAULT_FRAME_LEN,
            threads: 0,
        },
    })?;

    // The node: booted from slot A (1.0.0).
    let cmdline = dir.join("cmdline");
    std::fs::write(
        &cmdline,
        format!(
            "{} usrhash={}",
            v1.report.facts.cmdline, v1.report.facts.root_hash
        ),
    )?;
    let mut config = EngineConfig::new(&disk, "basalt", "x86_64", "stable");
    config.backend = BackendKind::Bls;
    config.esp = EspLocation::Partition;
    config.state_dir = dir.join("state");
    config.trust_root = v1.keys.trust.clone();
    config.kernel_options = v2.report.facts.cmdline.clone();
    config.cmdline = cmdline.clone();
    config.boot_env = dir.join("boot.env");
    let mut engine = NodeEngine::new(config, Box::new(FileSource::new(&repo)));
    let req = CheckRequest {
        now: Utc::now(),
        installed_version: Some("1.0.0".parse()?),
        last_seen: None,
        allow_downgrade: false,
    };
    let CheckOutcome::Available(candidate) = engine.check(&req)? else {
        anyhow::bail!("no update found");
    };
    let downloaded = engine.download(&candidate, &mut |_| {}, &CancelFlag::new())?;
    ensure!(downloaded.slot == Slot::B, "{downloaded:?}");
    engine.apply(&downloaded, 3)?;
    let view = engine.node()?;
    ensure!(view.next_boot == Some(Slot::B), "{view:?}");

    // Boot it.
    let mut vm = VmConfig::uefi(&dir).disk(&disk).no_reboot(true).spawn()?;
    let up = vm.expect_any(&[V2_UP, V1_UP], BOOT)?;
    ensure!(
        up == 0,
        "1.0.0 booted instead of the update\n{}",
        vm.excerpt()
    );
    let at = vm.elapsed();
    vm.expect("BASALT-MINIMAL: done", STEP)?;
    vm.expect_poweroff(STEP)?;
    println!(
        "2.0.0 up at {:.1} s after QEMU start; serial log {}",
        at.as_secs_f64(),
        vm.serial_log().display()
    );
    drop(vm);

    // After the boot: slot B is booted and on trial (systemd-boot used one try); bless it.
    std::fs::write(
        &cmdline,
        format!(
            "{} usrhash={}",
            v2.report.facts.cmdline, v2.report.facts.root_hash
        ),
    )?;
    let view = engine.node()?;
    ensure!(view.booted == Some(Slot::B), "{view:?}");
    ensure!(view.slots[1].state == SlotState::Active, "{view:?}");
    ensure!(
        view.slots[1].boot
            == BootStatus::Trying {
                tries_left: 2,
                tries_done: 1
            },
        "{view:?}"
    );
    engine.mark_good().context("blessing the booted update")?;
    ensure!(engine.node()?.slots[1].boot == BootStatus::Good);
    Ok(())
}
