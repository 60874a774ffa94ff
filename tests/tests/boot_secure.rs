//! Secure Boot enforcing (OVMF with Debian's test keys enrolled): the whole boot path is
//! signed — systemd-boot, and per release one unified kernel image (systemd-stub + kernel +
//! initramfs + the command line with `usrhash=` + os-release, one PE signed as a whole) found
//! by systemd-boot as a type #2 entry `EFI/Linux/basalt-<version>[+tries].efi` with boot
//! counting. Slot A holds v1 (blessed entry), slot B v2 (staged, `+3`).
//!
//! 1. The signed chain: v2 boots (the kernel reports Secure Boot, basalt-init runs from the
//!    signed initramfs), its counter moves to `+2-1`.
//! 2. v2's UKI with one byte changed (in its initramfs): the firmware refuses to load it
//!    at each try; after three tries v1 boots. systemd-boot 252 hands a refused image's
//!    error back to the firmware, which then gives up (waits for a key) — OVMF as real
//!    firmware — so the three tries span power cycles (a watchdog's or an operator's reset);
//!    here each cycle is a new QEMU run on the same disk and variables.
//! 3. v2's UKI unsigned: the same.
//! 4. systemd-boot with one byte changed: the firmware refuses to start it; nothing boots.
//! 5. A type #1 entry (which an attacker with the ESP can write) that boots v1's signed UKI
//!    through an `efi` line with its own `options` (`init=`, `basalt.verity=logging`, another
//!    `usrhash=`): systemd-stub ignores them under Secure Boot, the kernel gets the UKI's
//!    signed command line and v1 boots as released.
//! 6. The production path: firmware in setup mode (no keys), `basalt secure-boot keys`'
//!    `loader/keys/auto/*.auth` on the ESP and `secure-boot-enroll force` in loader.conf;
//!    systemd-boot enrols PK, KEK and db and resets; from then on Secure Boot is enforcing
//!    with our keys, and our db-signed systemd-boot and UKI boot v1; a snakeoil-signed
//!    systemd-boot is then refused. (systemd-boot enrols unattended only a key set named
//!    `auto`; any other name is just a menu entry.)
//!
//! Each case runs on its own disk copy even when another fails; `BASALT_SECURE_CASES=enrol,…`
//! (the case folders) runs only those.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use basalt_disk::Slot;
use basalt_tests::artifacts::{minimal_image, MinimalImage};
use basalt_tests::scenario::{install_usr, UsrImage};
use basalt_tests::secure::{
    release_uki, secure_esp, signed_systemd_boot, snakeoil_signer, type2_entries,
};
use basalt_tests::vm::{scenario_dir, VmConfig};

/// One OVMF + Secure Boot boot (≈15 s idle under TCG); scaled by `BASALT_VM_TIMEOUT_FACTOR`.
const BOOT: Duration = Duration::from_secs(240);
const STEP: Duration = Duration::from_secs(60);
const UP: &str = "BASALT-MINIMAL: userspace up, version=";
const SB_ON: &str = "Secure boot enabled";

struct Inputs {
    uki1: PathBuf,
    uki2: PathBuf,
    uki2_unsigned: PathBuf,
    sd_boot: Vec<u8>,
    v2_usr: UsrImage,
}

#[test]
fn only_signed_boot_code_runs_and_a_refused_uki_falls_back() -> Result<()> {
    let v1 = minimal_image("1.0.0")?;
    let v2 = minimal_image("2.0.0")?;
    let root = scenario_dir("boot-secure")?;
    let signer = snakeoil_signer(&root)?;
    let uki1 = root.join("basalt-1.0.0.efi");
    let uki2 = root.join("basalt-2.0.0.efi");
    let uki2_unsigned = root.join("basalt-2.0.0-unsigned.efi");
    release_uki(&v1, &v1.report.facts.root_hash, "", Some(&signer), &uki1)?;
    release_uki(&v2, &v2.report.facts.root_hash, "", Some(&signer), &uki2)?;
    release_uki(&v2, &v2.report.facts.root_hash, "", None, &uki2_unsigned)?;
    let sd_boot = signed_systemd_boot(&signer, &root.join("systemd-bootx64.signed.efi"))?;
    let inputs = Inputs {
        v2_usr: UsrImage::of_release(&v2)?,
        uki1,
        uki2,
        uki2_unsigned,
        sd_boot,
    };
    type Case = fn(&Path, &MinimalImage, &Inputs) -> Result<()>;
    let cases: [(&str, &str, Case); 6] = [
        ("the signed chain boots", "signed", signed_chain),
        (
            "a UKI with one byte changed falls back",
            "tampered-uki",
            tampered_uki,
        ),
        ("an unsigned UKI falls back", "unsigned-uki", unsigned_uki),
        (
            "systemd-boot with one byte changed is refused",
            "tampered-loader",
            tampered_loader,
        ),
        (
            "an entry's options do not reach a signed UKI",
            "edited-options",
            edited_options,
        ),
        (
            "our own keys enrolled by systemd-boot",
            "enrol",
            enrol_own_keys,
        ),
    ];
    // BASALT_SECURE_CASES=enrol,signed runs only those (while working on one case).
    let only = std::env::var("BASALT_SECURE_CASES").ok();
    let wanted = |folder: &str| {
        only.as_deref()
            .is_none_or(|list| list.split(',').any(|c| c.trim() == folder))
    };
    ensure!(
        cases.iter().any(|(_, folder, _)| wanted(folder)),
        "BASALT_SECURE_CASES={only:?} names no case"
    );
    let mut failed = Vec::new();
    for (name, folder, case) in cases.into_iter().filter(|(_, f, _)| wanted(f)) {
        let dir = root.join(folder);
        std::fs::create_dir_all(&dir)?;
        match case(&dir, &v1, &inputs) {
            Ok(()) => println!("{name}: held"),
            Err(e) => {
                println!("{name}: FAILED: {e:#}");
                failed.push(format!("{name}: {e:#}"));
            }
        }
    }
    if !failed.is_empty() {
        bail!("{} cases failed:\n{}", failed.len(), failed.join("\n\n"));
    }
    Ok(())
}

/// v1's disk with v2 in slot B, systemd-boot and the UKIs as given.
fn disk_with(
    dir: &Path,
    v1: &MinimalImage,
    inputs: &Inputs,
    bootloader: &[u8],
    v2_uki: &Path,
) -> Result<PathBuf> {
    let disk = dir.join("disk.img");
    v1.copy_disk(&disk)?;
    install_usr(&disk, Slot::B, &inputs.v2_usr)?;
    secure_esp(
        &disk,
        bootloader,
        &[
            ("basalt-1.0.0.efi", &inputs.uki1),
            ("basalt-2.0.0+3.efi", v2_uki),
        ],
    )?;
    Ok(disk)
}

fn signed_chain(dir: &Path, v1: &MinimalImage, inputs: &Inputs) -> Result<()> {
    let disk = disk_with(dir, v1, inputs, &inputs.sd_boot, &inputs.uki2)?;
    let mut vm = VmConfig::uefi(dir)
        .secure_boot(true)
        .disk(&disk)
        .no_reboot(true)
        .spawn()?;
    let seen = vm.expect_any(&[&format!("{UP}2.0.0"), &format!("{UP}1.0.0")], BOOT)?;
    ensure!(seen == 0, "expected v2\n{}", vm.excerpt());
    vm.expect_poweroff(STEP)?;
    let console = vm.console();
    ensure!(
        console.contains(SB_ON),
        "no Secure Boot message\n{}",
        vm.excerpt()
    );
    let entries = type2_entries(&disk)?;
    ensure!(
        entries == ["basalt-1.0.0.efi", "basalt-2.0.0+2-1.efi"],
        "entries after the boot: {entries:?}"
    );
    Ok(())
}

/// `file` with the byte at the middle of the first occurrence of `inside`'s first 4 KiB
/// flipped, written to `out`.
fn flip_inside(file: &Path, inside: &Path, out: &Path) -> Result<()> {
    let mut bytes = std::fs::read(file)?;
    let needle = std::fs::read(inside)?;
    let needle = &needle[..needle.len().min(4096)];
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .with_context(|| format!("{} is not inside {}", inside.display(), file.display()))?;
    bytes[at + needle.len() / 2] ^= 0x01;
    std::fs::write(out, bytes)?;
    Ok(())
}

/// OVMF's boot manager when every boot option failed: it waits for a key.
const GAVE_UP: &str = "Press any key to enter the Boot Manager Menu";
/// Power cycles allowed for the fallback (each costs one to two of the three tries).
const MAX_POWER_CYCLES: u32 = 4;

/// v2's entry is refused by the firmware at each of its three tries, then v1 boots. When the
/// firmware refuses to load an image, systemd-boot 252 returns to the firmware, which tries
/// its other boot options and then gives up waiting for a key — on real hardware as in OVMF
/// — so a refused UKI costs a try per attempt and the fallback completes over power cycles
/// (a watchdog or an operator's reset), each a new QEMU run here on the same disk and
/// variable store.
fn expect_fallback(dir: &Path, disk: &Path) -> Result<()> {
    let config = VmConfig::uefi(dir)
        .secure_boot(true)
        .disk(disk)
        .no_reboot(true);
    let mut refusals = 0;
    for cycle in 1..=MAX_POWER_CYCLES {
        let mut vm = config.spawn()?;
        let v1_up = format!("{UP}1.0.0");
        let v2_up = format!("{UP}2.0.0");
        let seen = vm.expect_any(&[&v1_up, GAVE_UP, &v2_up], BOOT)?;
        let console = vm.console();
        refusals += console
            .matches("Error loading \\EFI\\Linux\\basalt-2.0.0")
            .count();
        ensure!(
            !console.contains("Linux version ") || seen == 0,
            "cycle {cycle}: a kernel started before v1\n{}",
            vm.excerpt()
        );
        match seen {
            0 => {
                vm.expect_poweroff(STEP)?;
                ensure!(
                    console.matches("Linux version ").count() == 1,
                    "cycle {cycle}: more than v1's kernel started\n{}",
                    vm.excerpt()
                );
                ensure!(refusals == 3, "{refusals} refusals of v2's UKI, expected 3");
                let entries = type2_entries(disk)?;
                ensure!(
                    entries == ["basalt-1.0.0.efi", "basalt-2.0.0+0-3.efi"],
                    "entries after the fallback: {entries:?}"
                );
                println!("fell back to v1 in power cycle {cycle} after {refusals} refusals");
                return Ok(());
            }
            1 => {
                println!("power cycle {cycle}: the firmware gave up after refusing v2's UKI");
                vm.kill()?;
            }
            _ => bail!("v2 booted\n{}", vm.excerpt()),
        }
    }
    bail!("no fallback to v1 within {MAX_POWER_CYCLES} power cycles ({refusals} refusals)")
}

fn tampered_uki(dir: &Path, v1: &MinimalImage, inputs: &Inputs) -> Result<()> {
    // One bit of v2's initramfs (which holds basalt-init and its trust root) inside the UKI.
    let v2_initrd = inputs
        .v2_usr
        .path
        .with_file_name(basalt_image::build::image::INITRD_IMG);
    let tampered = dir.join("basalt-2.0.0-tampered.efi");
    flip_inside(&inputs.uki2, &v2_initrd, &tampered)?;
    let disk = disk_with(dir, v1, inputs, &inputs.sd_boot, &tampered)?;
    expect_fallback(dir, &disk)
}

fn unsigned_uki(dir: &Path, v1: &MinimalImage, inputs: &Inputs) -> Result<()> {
    let disk = disk_with(dir, v1, inputs, &inputs.sd_boot, &inputs.uki2_unsigned)?;
    expect_fallback(dir, &disk)
}

fn tampered_loader(dir: &Path, v1: &MinimalImage, inputs: &Inputs) -> Result<()> {
    let signed = dir.join("systemd-bootx64.signed.efi");
    std::fs::write(&signed, &inputs.sd_boot)?;
    let sdmagic = dir.join("sdmagic");
    std::fs::write(&sdmagic, b"#### LoaderInfo: systemd-boot")?;
    let tampered = dir.join("systemd-bootx64.tampered.efi");
    flip_inside(&signed, &sdmagic, &tampered)?;
    let disk = disk_with(dir, v1, inputs, &std::fs::read(&tampered)?, &inputs.uki2)?;
    let mut vm = VmConfig::uefi(dir)
        .secure_boot(true)
        .disk(&disk)
        .no_reboot(true)
        .spawn()?;
    let seen = vm.expect_any(&["Access Denied", "Linux version ", UP], BOOT)?;
    ensure!(
        seen == 0,
        "the firmware started something\n{}",
        vm.excerpt()
    );
    // Give it time to start anything else it might: nothing may come.
    let more = vm.expect_any(&["Linux version ", UP], STEP);
    ensure!(
        more.is_err(),
        "a kernel started after the refusal\n{}",
        vm.excerpt()
    );
    vm.kill()?;
    let entries = type2_entries(&disk)?;
    ensure!(
        entries == ["basalt-1.0.0.efi", "basalt-2.0.0+3.efi"],
        "systemd-boot must not have run: {entries:?}"
    );
    Ok(())
}

fn edited_options(dir: &Path, v1: &MinimalImage, inputs: &Inputs) -> Result<()> {
    use basalt_disk::Esp;
    let disk = dir.join("disk.img");
    v1.copy_disk(&disk)?;
    secure_esp(&disk, &inputs.sd_boot, &[])?;
    let hostile = format!(
        "console=ttyS0 panic=-1 init=/bin/sh basalt.verity=logging usrhash={}",
        "ab".repeat(32)
    );
    let mut esp = basalt_tests::secure::esp(&disk)?;
    esp.write_atomic("basalt/uki/basalt-1.0.0.efi", &std::fs::read(&inputs.uki1)?)?;
    esp.write_atomic(
        "loader/entries/edited.conf",
        format!(
            "title Edited\nversion 9.9.9\nefi /basalt/uki/basalt-1.0.0.efi\noptions {hostile}\n"
        )
        .as_bytes(),
    )?;
    drop(esp);
    let mut vm = VmConfig::uefi(dir)
        .secure_boot(true)
        .disk(&disk)
        .no_reboot(true)
        .spawn()?;
    let seen = vm.expect_any(&[&format!("{UP}1.0.0"), "BASALT-INIT FAILED"], BOOT)?;
    ensure!(seen == 0, "v1 did not boot as released\n{}", vm.excerpt());
    vm.expect_poweroff(STEP)?;
    let console = vm.console();
    let line = console
        .lines()
        .find(|l| l.contains("Command line: "))
        .context("the kernel printed no command line")?;
    ensure!(
        !line.contains("init=/bin/sh") && !line.contains(&"ab".repeat(32)),
        "the entry's options reached the kernel: {line}"
    );
    ensure!(
        line.contains(&format!("usrhash={}", v1.report.facts.root_hash)),
        "the UKI's own command line is not the kernel's: {line}"
    );
    ensure!(
        console.contains(SB_ON),
        "Secure Boot is off\n{}",
        vm.excerpt()
    );
    Ok(())
}

fn enrol_own_keys(dir: &Path, v1: &MinimalImage, inputs: &Inputs) -> Result<()> {
    use basalt_disk::Esp;
    let keys = basalt_image::build::sbkeys::generate(
        &dir.join("keys"),
        "Basalt Test",
        basalt_image::build::sbkeys::AUTO_ENROL,
        "5a1d3a6e-0b1c-4d2e-9f30-112233445566",
    )?;
    let signer = (keys.file("db", "key"), keys.file("db", "crt"));
    let uki = dir.join("basalt-1.0.0.efi");
    release_uki(v1, &v1.report.facts.root_hash, "", Some(&signer), &uki)?;
    let sd_boot = signed_systemd_boot(&signer, &dir.join("systemd-bootx64.efi"))?;
    let disk = dir.join("disk.img");
    v1.copy_disk(&disk)?;
    secure_esp(&disk, &sd_boot, &[("basalt-1.0.0.efi", &uki)])?;
    let mut esp = basalt_tests::secure::esp(&disk)?;
    for key in basalt_image::build::sbkeys::KEYS {
        let auth = std::fs::read(keys.loader_keys.join(format!("{key}.auth")))?;
        esp.write_atomic(&format!("loader/keys/auto/{key}.auth"), &auth)?;
    }
    let conf = String::from_utf8(esp.read("loader/loader.conf")?)?;
    esp.write_atomic(
        "loader/loader.conf",
        format!("{conf}secure-boot-enroll force\n").as_bytes(),
    )?;
    drop(esp);

    let config = VmConfig::uefi(dir)
        .secure_boot_setup_mode()
        .disk(&disk)
        .no_reboot(true);
    // Run 1: systemd-boot enrols the keys and resets the machine (QEMU exits).
    let mut vm = config.spawn()?;
    let seen = vm.expect_any(&["Linux version ", UP, "reboot", "Enrolling"], BOOT);
    let exit = vm.wait_exit(BOOT);
    println!("enrolment run: {seen:?}, {exit:?}");
    ensure!(
        !vm.console().contains("Linux version "),
        "a kernel started before the keys were enrolled\n{}",
        vm.excerpt()
    );
    // Run 2: enforcing with our keys.
    let mut vm = config.spawn()?;
    let seen = vm.expect_any(&[&format!("{UP}1.0.0"), "Access Denied"], BOOT)?;
    ensure!(seen == 0, "our signed chain did not boot\n{}", vm.excerpt());
    vm.expect_poweroff(STEP)?;
    ensure!(
        vm.console().contains(SB_ON),
        "Secure Boot is not enforcing after the enrolment\n{}",
        vm.excerpt()
    );
    // Run 3: a loader signed by another key (Debian's snakeoil) is refused: only our db
    // is trusted now.
    let mut esp = basalt_tests::secure::esp(&disk)?;
    esp.write_atomic("EFI/BOOT/BOOTX64.EFI", &inputs.sd_boot)?;
    drop(esp);
    let mut vm = config.spawn()?;
    let seen = vm.expect_any(&["Access Denied", "Linux version ", UP], BOOT)?;
    ensure!(
        seen == 0,
        "a loader signed by another key started something\n{}",
        vm.excerpt()
    );
    vm.kill()?;
    Ok(())
}
