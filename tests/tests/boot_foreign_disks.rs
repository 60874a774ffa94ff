//! Only the boot disk supplies `/usr`, its verity tree and the writable root, and no disk can
//! take down PID 1. The slot's partitions are found by UUIDs derived from a public root
//! hash, so a USB stick (or a re-attached old disk) can carry copies of them plus a root
//! partition of its own; enumerated first, it used to win and supply `/etc` and `/var`.
//!
//! The disks (private copies of the minimal v1 image, all read-write):
//! - *real*: the node's disk.
//! - *attacker*: copies of the same public partitions, its own root whose `/etc/hostname` is
//!   `attacker-disk`, an ESP that is not bootable (firmware boots the real disk) and has a
//!   different partition UUID.
//! - *absurd GPT*: a partition table (valid CRCs) claiming 2^32-1 entries: the old reader
//!   allocated that before checking it, and PID 1 died with the kernel.
//!
//! Three boots:
//! 1. OVMF → systemd-boot on *real*, *attacker* attached first: systemd-boot's
//!    `LoaderDevicePartUUID` names the real ESP; basalt-init takes everything from that disk
//!    and says it ignored the copy (`hostname=basalt`).
//! 2. Direct kernel boot, nobody names the boot disk, *attacker* and *real*: two disks hold
//!    the slot — refused (`boot-disk-ambiguous`), never guessed.
//! 3. Direct kernel boot with `basalt.bootdisk=PARTUUID=<real ESP>`, *absurd GPT* first, then
//!    *attacker*, then *real*: the absurd disk is skipped with a log line naming what it
//!    claimed, the copy ignored, the real disk booted.
//!
//! Each boot runs even when another fails; the failure lists every attack that got through.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use basalt_disk::Inventory;
use basalt_tests::artifacts::{minimal_image, MinimalImage};
use basalt_tests::hostile::{
    direct_boot, extra_rw_disk, put_file, write_absurd_gpt, write_root_tree,
};
use basalt_tests::scenario::expect_markers;
use basalt_tests::tool::SGDISK;
use basalt_tests::vm::{scenario_dir, VmConfig, RESTART_MARKER};

/// One boot (OVMF ≈10–15 s, direct ≈5 s idle under TCG); scaled by
/// `BASALT_VM_TIMEOUT_FACTOR`.
const BOOT: Duration = Duration::from_secs(180);
const STEP: Duration = Duration::from_secs(60);
const V1_UP: &str = "BASALT-MINIMAL: userspace up, version=1.0.0";
const FAILED: &str = "BASALT-INIT FAILED reason=";
const REAL_ROOT: &str = "BASALT-MINIMAL: hostname=basalt";
const ATTACKER_ROOT: &str = "BASALT-MINIMAL: hostname=attacker-disk";

struct Disks {
    real: std::path::PathBuf,
    attacker: std::path::PathBuf,
    absurd: std::path::PathBuf,
    real_esp: String,
}

#[test]
fn only_the_boot_disk_counts_and_no_disk_takes_down_pid1() -> Result<()> {
    let image = minimal_image("1.0.0")?;
    let root = scenario_dir("boot-foreign-disks")?;
    let disks = prepare(&root, &image)?;
    type Case = fn(&Path, &MinimalImage, &Disks) -> Result<()>;
    let cases: [(&str, &str, Case); 3] = [
        ("pinned by the boot loader", "loader", pinned_by_loader),
        (
            "two disks with the slot, nobody names one",
            "ambiguous",
            ambiguous,
        ),
        (
            "pinned on the command line, absurd GPT first",
            "cmdline",
            pinned_by_cmdline,
        ),
    ];
    let mut failed = Vec::new();
    for (name, folder, case) in cases {
        let dir = root.join(folder);
        std::fs::create_dir_all(&dir)?;
        match case(&dir, &image, &disks) {
            Ok(()) => println!("{name}: held"),
            Err(e) => {
                println!("{name}: FAILED: {e:#}");
                failed.push(format!("{name}: {e:#}"));
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of 3 cases failed:\n{}",
            failed.len(),
            failed.join("\n\n")
        );
    }
    Ok(())
}

fn prepare(dir: &Path, image: &MinimalImage) -> Result<Disks> {
    let real = dir.join("real.img");
    image.copy_disk(&real)?;
    let real_esp = Inventory::read_path(&real, None)?.esp.uuid.to_string();

    let attacker = dir.join("attacker.img");
    image.copy_disk(&attacker)?;
    let inv = Inventory::read_path(&attacker, None)?;
    // Not bootable: firmware passes over it to the real disk.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&attacker)?;
        f.write_all_at(&vec![0u8; 1 << 20], inv.esp.offset)?;
        f.sync_all()?;
    }
    let mut sgdisk = SGDISK.command()?;
    sgdisk.args(["--partition-guid=1:R"]).arg(&attacker);
    SGDISK.run(&mut sgdisk)?;
    let tree = dir.join("attacker-root");
    put_file(&tree.join("etc/hostname"), b"attacker-disk\n", 0o644)?;
    write_root_tree(&attacker, &tree)?;
    ensure!(
        Inventory::read_path(&attacker, None)?.esp.uuid.to_string() != real_esp,
        "the attacker's ESP kept the real partition UUID"
    );

    let absurd = dir.join("absurd-gpt.img");
    write_absurd_gpt(&absurd, 8 << 20)?;
    Ok(Disks {
        real,
        attacker,
        absurd,
        real_esp,
    })
}

fn pinned_by_loader(dir: &Path, _image: &MinimalImage, d: &Disks) -> Result<()> {
    let config = extra_rw_disk(VmConfig::uefi(dir).disk(&d.attacker), &d.real).no_reboot(true);
    let mut vm = config.spawn()?;
    let seen = vm.expect_any(&[V1_UP, FAILED], BOOT)?;
    ensure!(
        seen == 0,
        "expected v1 from the real disk\n{}",
        vm.excerpt()
    );
    let seen = vm.expect_any(&[REAL_ROOT, ATTACKER_ROOT], STEP)?;
    ensure!(
        seen == 0,
        "/etc came from the attacker's disk\n{}",
        vm.excerpt()
    );
    vm.expect_poweroff(STEP)?;
    expect_markers(
        0,
        &vm.console(),
        &[
            ("(LoaderDevicePartUUID)", true),
            ("basalt-init: slot on /dev/vdb", true),
            ("ignoring /dev/vda: it holds a copy of the /usr slot", true),
        ],
    )?;
    Ok(())
}

fn ambiguous(dir: &Path, image: &MinimalImage, d: &Disks) -> Result<()> {
    let config = extra_rw_disk(direct_boot(dir, image, "")?.disk(&d.attacker), &d.real);
    let mut vm = config.spawn()?;
    let seen = vm.expect_any(&[FAILED, V1_UP], BOOT)?;
    ensure!(seen == 0, "expected a refusal\n{}", vm.excerpt());
    let reason = vm.line_after_cursor(STEP);
    ensure!(
        reason.starts_with("boot-disk-ambiguous"),
        "reason {:?}\n{}",
        reason.lines().next(),
        vm.excerpt()
    );
    vm.expect(RESTART_MARKER, STEP)?;
    Ok(())
}

fn pinned_by_cmdline(dir: &Path, image: &MinimalImage, d: &Disks) -> Result<()> {
    let pin = format!("basalt.bootdisk=PARTUUID={}", d.real_esp);
    let config = direct_boot(dir, image, &pin)?.disk(&d.absurd);
    let config = extra_rw_disk(extra_rw_disk(config, &d.attacker), &d.real);
    let mut vm = config.spawn()?;
    let seen = vm
        .expect_any(&[V1_UP, FAILED, "Kernel panic"], BOOT)
        .context("booting past a disk with an absurd GPT")?;
    ensure!(
        seen == 0,
        "expected v1 from the real disk\n{}",
        vm.excerpt()
    );
    let seen = vm.expect_any(&[REAL_ROOT, ATTACKER_ROOT], STEP)?;
    ensure!(
        seen == 0,
        "/etc came from the attacker's disk\n{}",
        vm.excerpt()
    );
    vm.expect_poweroff(STEP)?;
    expect_markers(
        0,
        &vm.console(),
        &[
            ("basalt-init: skipping /dev/vda:", true),
            ("4294967295 entries", true),
            ("(basalt.bootdisk=)", true),
            ("basalt-init: slot on /dev/vdc", true),
            ("ignoring /dev/vdb: it holds a copy of the /usr slot", true),
        ],
    )?;
    Ok(())
}
