//! The signed usr-hash statement binds the whole dm-verity parameter set, the OS name and the
//! version, and basalt-init enforces a version floor: an attacker who can write the disk and
//! the boot entries, but holds no release key, can neither boot a `/usr` that differs from
//! what was signed nor roll the node back to an older signed release.
//!
//! Three attacks, each on a private copy of the minimal v1 disk:
//! 1. **Entry edited to an older `/usr`** (direct boot): v2's kernel and initramfs with
//!    `usrhash=` of v1 (signed, with known holes). v2's initramfs has `min-usr-version=2.0.0`
//!    in its boot policy: refused (`usr-below-floor`).
//! 2. **Superblock edited** (direct boot): v1's verity superblock claims fewer data blocks,
//!    with the same tree geometry, so the root hash still verifies what is left — a truncated
//!    `/usr` under a signed hash. The statement says otherwise: refused (`verity-not-signed`).
//! 3. **Old entry after a blessed update** (OVMF → systemd-boot, two runs): v2 staged in slot
//!    B boots and, as the updater does once v2 is blessed, raises the machine's floor
//!    (`BasaltUsrFloor`, an EFI variable) to 2.0.0; then v2's entry is deleted so v1's (its
//!    own kernel, initramfs and signed `/usr`) boots: refused from the floor in NVRAM.
//!
//! Each case runs even when another fails; the failure lists every attack that got through.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use basalt_disk::{Esp, Inventory, RootHash, Slot, SlotPart};
use basalt_tests::artifacts::{minimal_image, MinimalImage};
use basalt_tests::hostile::{direct_boot, direct_boot_usr};
use basalt_tests::scenario::{
    entry_files, esp_backend, expect_markers, install_usr, release_target, stage, UsrImage,
};
use basalt_tests::vm::{scenario_dir, VmConfig, RESTART_MARKER};
use basalt_verity::{hash_tree_size, Superblock};

/// One boot (OVMF ≈10–15 s, direct ≈5 s idle under TCG); scaled by
/// `BASALT_VM_TIMEOUT_FACTOR`.
const BOOT: Duration = Duration::from_secs(180);
const STEP: Duration = Duration::from_secs(60);
const FAILED: &str = "BASALT-INIT FAILED reason=";
const USERSPACE_UP: &str = "BASALT-MINIMAL: userspace up, version=";

#[test]
fn only_the_signed_usr_at_or_above_the_floor_boots() -> Result<()> {
    let v1 = minimal_image("1.0.0")?;
    let v2 = minimal_image("2.0.0")?;
    let root = scenario_dir("boot-usr-binding")?;
    type Case = fn(&Path, &MinimalImage, &MinimalImage) -> Result<()>;
    let cases: [(&str, &str, Case); 3] = [
        (
            "entry edited to an older /usr",
            "older-usr",
            older_usr_under_new_initramfs,
        ),
        ("superblock edited", "superblock", shrunk_superblock),
        (
            "old entry after a blessed update",
            "efi-floor",
            old_entry_after_blessed_update,
        ),
    ];
    let mut failed = Vec::new();
    for (name, folder, case) in cases {
        let dir = root.join(folder);
        std::fs::create_dir_all(&dir)?;
        match case(&dir, &v1, &v2) {
            Ok(()) => println!("{name}: held"),
            Err(e) => {
                println!("{name}: FAILED: {e:#}");
                failed.push(format!("{name}: {e:#}"));
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of 3 attacks got through:\n{}",
            failed.len(),
            failed.join("\n\n")
        );
    }
    Ok(())
}

/// Boots until basalt-init refuses; the refusal must carry `reason`, and nothing may boot.
fn expect_refusal(vm: &mut basalt_tests::vm::Vm, reason: &str) -> Result<String> {
    let seen = vm.expect_any(&[FAILED, USERSPACE_UP], BOOT)?;
    ensure!(seen == 0, "expected a refusal ({reason})\n{}", vm.excerpt());
    let line = vm.line_after_cursor(STEP);
    ensure!(
        line.starts_with(reason),
        "reason {line:?}, expected {reason}\n{}",
        vm.excerpt()
    );
    vm.expect(RESTART_MARKER, STEP)?;
    Ok(line)
}

fn older_usr_under_new_initramfs(dir: &Path, v1: &MinimalImage, v2: &MinimalImage) -> Result<()> {
    let disk = dir.join("disk.img");
    v1.copy_disk(&disk)?;
    let mut vm = direct_boot_usr(dir, v2, &v1.report.facts.root_hash, "")?
        .disk(&disk)
        .spawn()?;
    let line = expect_refusal(&mut vm, "usr-below-floor")?;
    ensure!(
        line.contains("1.0.0 is below the floor 2.0.0 set by the initramfs's boot policy"),
        "{line}"
    );
    Ok(())
}

fn shrunk_superblock(dir: &Path, v1: &MinimalImage, _v2: &MinimalImage) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let disk = dir.join("disk.img");
    v1.copy_disk(&disk)?;
    let verity = Inventory::read_path(&disk, None)?.slot_range(Slot::A, SlotPart::Verity);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)?;
    let mut head = [0u8; 512];
    f.read_exact_at(&mut head, verity.offset)?;
    let mut sb = Superblock::parse(&head)?;
    let n = sb.data_blocks;
    // The fewest data blocks with the same tree layout: the root hash still covers them.
    let mut m = n - 1;
    while m > 1 && hash_tree_size(m - 1) == hash_tree_size(n) {
        m -= 1;
    }
    ensure!(
        hash_tree_size(m) == hash_tree_size(n) && m < n,
        "no smaller geometry-preserving count for {n}"
    );
    sb.data_blocks = m;
    f.write_all_at(&sb.to_bytes()?, verity.offset)?;
    f.sync_all()?;
    println!(
        "superblock: {n} → {m} data blocks (tree of {} bytes either way)",
        hash_tree_size(n)
    );
    let mut vm = direct_boot(dir, v1, "")?.disk(&disk).spawn()?;
    let line = expect_refusal(&mut vm, "verity-not-signed")?;
    ensure!(line.contains(&format!("data blocks is {m}")), "{line}");
    Ok(())
}

fn old_entry_after_blessed_update(dir: &Path, v1: &MinimalImage, v2: &MinimalImage) -> Result<()> {
    let disk = dir.join("disk.img");
    v1.copy_disk(&disk)?;
    let usr2 = UsrImage::of_release(v2)?;
    install_usr(&disk, Slot::B, &usr2)?;
    let v1_entry = entry_files(&disk)?
        .into_iter()
        .next()
        .context("the v1 disk has no entry")?;
    stage(
        &disk,
        Slot::B,
        &release_target(v2, &usr2.root_hash, "basalt.test=raise-floor"),
        3,
    )?;
    let config = VmConfig::uefi(dir).disk(&disk).no_reboot(true);

    // Run 1: v2 boots and its floor goes into NVRAM (the updater's step after blessing).
    let mut vm = config.spawn()?;
    let seen = vm.expect_any(&[&format!("{USERSPACE_UP}2.0.0"), FAILED], BOOT)?;
    ensure!(seen == 0, "v2 did not boot\n{}", vm.excerpt());
    vm.expect("BASALT-MINIMAL: floor raised to 2.0.0", STEP)?;
    vm.expect_poweroff(STEP)?;

    // The attacker (or a careless operator) deletes v2's entry: v1's own boots next.
    let mut bls = esp_backend(&disk)?;
    for file in entry_files(&disk)? {
        if file != v1_entry {
            bls.esp_mut().remove(&format!("loader/entries/{file}"))?;
        }
    }
    ensure!(
        entry_files(&disk)? == [v1_entry.clone()],
        "v2's entry is still there"
    );
    let v1_hash = RootHash::parse(&v1.report.facts.root_hash)?;

    // Run 2: v1's kernel, initramfs and signed /usr — below the machine's floor.
    let mut vm = config.spawn()?;
    let line = expect_refusal(&mut vm, "usr-below-floor")?;
    ensure!(
        line.contains("below the floor 2.0.0 set by the machine's BasaltUsrFloor EFI variable"),
        "{line}"
    );
    expect_markers(
        1,
        &vm.console(),
        &[
            (&format!("usrhash={}", v1_hash.to_hex()), true),
            (USERSPACE_UP, false),
        ],
    )?;
    Ok(())
}
