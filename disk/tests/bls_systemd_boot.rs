//! The real peer of the BLS backend: systemd-boot 252 under OVMF (QEMU, TCG) picks an entry
//! from an ESP we built, and renames its counter before starting the "kernel". The kernel
//! here is systemd's `linuxx64.efi.stub` without a payload: it fails at once, so the firmware
//! falls through to its UEFI shell, which runs `startup.nsh` (`reset -s`) and powers off.
//!
//! For each scenario we copy the disk, apply our own `boot_attempt()` to the copy (our
//! prediction: which entry, which rename), boot the original, and compare the entry names.
//! Good entries are not renamed by systemd-boot, so every scenario makes the entry we
//! predict distinguishable from the others by what happens to it.
//!
//! The scenarios prove issue 7's "versions and boot order" under the real boot loader: a
//! pre-release after its final, an operator-approved downgrade, an explicit rollback to the
//! older slot, an upgrade (over an entry written by older code), another build of the same
//! version — each time the slot staged last (or rolled back to) is the one systemd-boot starts.
//!
//! Needs: qemu-system-x86, ovmf, systemd-boot-efi, gdisk. Fails (not skips) without them.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod bls_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use basalt_disk::bls::{BlsBackend, ENTRIES_DIR};
use basalt_disk::esp::{self, FatImageEsp};
use basalt_disk::{BootControl, BootTarget, Esp, Slot};
use bls_common::target;

const MIB: u64 = 1024 * 1024;
const ESP_OFFSET: u64 = MIB;
const ESP_LEN: u64 = 64 * MIB;
const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

fn need(path: &str, package: &str) {
    assert!(
        Path::new(path).is_file(),
        "{path} missing: install the Debian package {package}"
    );
}

/// A target whose "kernel" is the payload-less EFI stub.
fn stub_target(host: &Path, version: &str) -> BootTarget {
    let mut t = target(host, version);
    t.kernel = Some(PathBuf::from(STUB));
    t
}

/// A GPT disk with one ESP holding systemd-boot, loader.conf and a shell script that powers
/// the machine off once the firmware falls back to its shell.
fn disk(dir: &Path) -> (PathBuf, BlsBackend<FatImageEsp>) {
    let img = dir.join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(ESP_OFFSET + ESP_LEN + MIB)
        .unwrap();
    let out = Command::new("sgdisk")
        .args(["-n1:2048:+64M", "-t1:ef00"])
        .arg(&img)
        .output()
        .unwrap_or_else(|e| panic!("cannot run sgdisk ({e}): install the Debian package gdisk"));
    assert!(out.status.success(), "sgdisk: {out:?}");
    let mut fat = esp::build_esp_image(
        &img,
        ESP_OFFSET,
        ESP_LEN,
        &[(esp::DEFAULT_LOADER_PATH, Path::new(esp::SYSTEMD_BOOT_EFI))],
    )
    .unwrap();
    fat.write_atomic("startup.nsh", b"reset -s\r\n").unwrap();
    (img, BlsBackend::new(fat))
}

fn entry_names(esp: &FatImageEsp) -> Vec<String> {
    let mut v: Vec<String> = esp
        .list(ENTRIES_DIR)
        .unwrap()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.name)
        .collect();
    v.sort();
    v
}

/// Boot `img` once under OVMF; returns the serial log. A hang guard of 10 minutes, not a
/// timing assertion.
fn boot(dir: &Path, img: &Path) -> String {
    let vars = dir.join("vars.fd");
    std::fs::copy(OVMF_VARS, &vars).unwrap();
    let log = dir.join("serial.log");
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nographic",
        ])
        .args(["-nic", "none", "-no-reboot"])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,cache=writethrough",
            img.display()
        ))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run qemu ({e}): install qemu-system-x86"));
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "qemu: {status}");
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the guest did not power off; serial log:\n{}",
                String::from_utf8_lossy(&std::fs::read(&log).unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned()
}

/// An entry as older Basalt code wrote it (`sort-key basalt`, raw semver), blessed, for slot A,
/// with the stub as its kernel.
fn legacy_a(b: &mut BlsBackend<FatImageEsp>, host: &Path, v: &str) {
    let t = stub_target(host, v);
    let esp = b.esp_mut();
    esp::copy_in(esp, &format!("basalt/{v}/vmlinuz"), Path::new(STUB)).unwrap();
    esp::copy_in(
        esp,
        &format!("basalt/{v}/initrd"),
        t.initrd.as_deref().unwrap(),
    )
    .unwrap();
    let text = format!(
        "title Basalt {v} (slot A)\nsort-key basalt\nversion {v}\nlinux /basalt/{v}/vmlinuz\n\
         initrd /basalt/{v}/initrd\noptions usrhash={} basalt.slot=a\n",
        t.usr_hash
    );
    esp.write_atomic(&format!("{ENTRIES_DIR}/basalt-{v}.conf"), text.as_bytes())
        .unwrap();
}

/// Build a disk with `setup`, predict with our `boot_attempt` on a copy, boot the original;
/// the prediction must be `expect` and must be what systemd-boot did.
fn check(name: &str, expect: Slot, setup: impl FnOnce(&mut BlsBackend<FatImageEsp>, &Path)) {
    let dir = tempfile::tempdir().unwrap();
    let (img, mut b) = disk(dir.path());
    setup(&mut b, dir.path());
    let before = entry_names(b.esp());

    let copy = dir.path().join("predicted.img");
    std::fs::copy(&img, &copy).unwrap();
    let mut sim = BlsBackend::new(FatImageEsp::open(&copy, ESP_OFFSET, ESP_LEN).unwrap());
    let predicted_slot = sim.status().unwrap().next;
    assert_eq!(predicted_slot, Some(expect), "{name}: before {before:?}");
    let predicted_title = sim.boot_order().unwrap()[0].content.title.clone().unwrap();
    sim.boot_attempt().unwrap();
    let predicted = entry_names(sim.esp());

    let log = boot(dir.path(), &img);
    let actual = entry_names(&FatImageEsp::open(&img, ESP_OFFSET, ESP_LEN).unwrap());
    assert!(
        log.contains("Failed to execute"),
        "{name}: systemd-boot did not start an entry; serial log:\n{log}"
    );
    // "Failed to execute <title> (<loader path>): Not Found"
    let started = log
        .split("Failed to execute ")
        .nth(1)
        .and_then(|rest| rest.split(" (\\").next())
        .unwrap_or_default()
        .to_string();
    if actual != predicted {
        // Keep the evidence for a look with mtools.
        eprintln!(
            "{name}: disk and serial log kept in {}",
            dir.keep().display()
        );
    }
    assert_eq!(
        actual, predicted,
        "{name}: before {before:?}, predicted next {predicted_slot:?}, systemd-boot started {started:?}"
    );
    // systemd-boot names the entry it started: the title of the entry we predicted.
    assert_eq!(started.trim(), predicted_title, "{name}");
    eprintln!("{name}: {before:?} -> {actual:?} (predicted {predicted_slot:?})");
}

#[test]
fn systemd_boot_picks_what_we_predict() {
    need(esp::SYSTEMD_BOOT_EFI, "systemd-boot-efi");
    need(STUB, "systemd-boot-efi");
    need(OVMF_CODE, "ovmf");
    need(OVMF_VARS, "ovmf");

    // Issue 7, "versions and boot order": the slot staged last boots next, whatever the
    // version relation. Seven boots (≈10 s each under TCG); each scenario makes the entry we
    // predict distinguishable by what systemd-boot does to it.

    // (4) A normal upgrade, over an entry written by older code (`sort-key basalt`): any
    // stage key sorts before it.
    check("upgrade over an older-style entry", Slot::B, |b, h| {
        legacy_a(b, h, "1.0.0");
        b.stage(Slot::B, &stub_target(h, "2.0.0"), 3).unwrap();
    });
    // (1) A pre-release staged while its final is good: systemd's version order ranks
    // `1.2.0-rc.1` above `1.2.0` and `1.2.0~rc.1` below it; neither matters, the key does.
    check("pre-release after its final", Slot::B, |b, h| {
        b.stage(Slot::A, &stub_target(h, "1.2.0"), 3).unwrap();
        b.mark_good(Slot::A).unwrap();
        b.stage(Slot::B, &stub_target(h, "1.2.0-rc.1"), 3).unwrap();
    });
    // (2) An operator-approved downgrade: 1.0.0 staged while 2.0.0 is good.
    check("operator-approved downgrade", Slot::B, |b, h| {
        b.stage(Slot::A, &stub_target(h, "2.0.0"), 3).unwrap();
        b.mark_good(Slot::A).unwrap();
        b.stage(Slot::B, &stub_target(h, "1.0.0"), 3).unwrap();
    });
    // (3) An explicit rollback to the older slot: it boots (good: not renamed), the other is
    // bad (had systemd-boot picked it, `+0` would have become `+0-1`).
    check("explicit rollback to the older slot", Slot::A, |b, h| {
        b.stage(Slot::A, &stub_target(h, "1.0.0"), 3).unwrap();
        b.mark_good(Slot::A).unwrap();
        b.stage(Slot::B, &stub_target(h, "2.0.0"), 3).unwrap();
        b.boot_attempt().unwrap();
        b.mark_good(Slot::B).unwrap();
        b.rollback(Slot::A).unwrap();
        let st = b.status().unwrap();
        assert_eq!(st.slot(Slot::B).status, basalt_disk::BootStatus::Bad);
    });
    // (5) Build metadata: another build of the same version (names carry `_`, one `+`),
    // with a two-digit counter: `+10` is 10 tries left (renamed `+9-1`), not a bad entry.
    check("another build, two-digit counter", Slot::B, |b, h| {
        b.stage(Slot::A, &stub_target(h, "1.2.0+build.5"), 3)
            .unwrap();
        b.mark_good(Slot::A).unwrap();
        b.stage(Slot::B, &stub_target(h, "1.2.0+build.6"), 10)
            .unwrap();
    });
    // Tries exhausted on the slot staged last: the other counting entry boots, the bad one
    // waits.
    check("exhausted falls back", Slot::A, |b, h| {
        b.stage(Slot::A, &stub_target(h, "1.0.0"), 2).unwrap();
        b.stage(Slot::B, &stub_target(h, "1.1.0"), 1).unwrap();
        b.boot_attempt().unwrap();
    });
    // Every entry bad: systemd-boot still boots the first of them (the one staged last).
    check("all bad", Slot::B, |b, h| {
        b.stage(Slot::A, &stub_target(h, "1.1.0"), 1).unwrap();
        b.boot_attempt().unwrap();
        b.stage(Slot::B, &stub_target(h, "1.0.0"), 1).unwrap();
        b.boot_attempt().unwrap();
    });
}
