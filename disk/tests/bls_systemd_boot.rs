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

/// Build a disk with `setup`, predict with our `boot_attempt` on a copy, boot the original.
fn check(name: &str, setup: impl FnOnce(&mut BlsBackend<FatImageEsp>, &Path)) {
    let dir = tempfile::tempdir().unwrap();
    let (img, mut b) = disk(dir.path());
    setup(&mut b, dir.path());
    let before = entry_names(b.esp());

    let copy = dir.path().join("predicted.img");
    std::fs::copy(&img, &copy).unwrap();
    let mut sim = BlsBackend::new(FatImageEsp::open(&copy, ESP_OFFSET, ESP_LEN).unwrap());
    let predicted_slot = sim.status().unwrap().next;
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

    // A blessed 1.0 and a staged 1.1: the staged one boots and loses a try.
    check("staged over good", |b, h| {
        b.stage(Slot::A, &stub_target(h, "1.0"), 3).unwrap();
        b.mark_good(Slot::A).unwrap();
        b.stage(Slot::B, &stub_target(h, "1.1"), 3).unwrap();
    });
    // A bad entry sorts after a good one: the good one boots, nothing is renamed (had
    // systemd-boot picked the bad one, it would have become +0-4).
    check("good over exhausted", |b, h| {
        b.stage(Slot::A, &stub_target(h, "1.0"), 3).unwrap();
        b.mark_good(Slot::A).unwrap();
        b.stage(Slot::B, &stub_target(h, "1.1"), 3).unwrap();
        for _ in 0..3 {
            b.boot_attempt().unwrap();
        }
    });
    // Version order, not string order: 1.10 is newer than 1.9.
    check("1.10 over 1.9", |b, h| {
        b.stage(Slot::A, &stub_target(h, "1.9"), 2).unwrap();
        b.stage(Slot::B, &stub_target(h, "1.10"), 3).unwrap();
        b.boot_attempt().unwrap();
    });
    // Tries exhausted on the newer one: the older counting entry boots, the bad one waits.
    check("exhausted falls back", |b, h| {
        b.stage(Slot::A, &stub_target(h, "1.0"), 2).unwrap();
        b.stage(Slot::B, &stub_target(h, "1.1"), 1).unwrap();
        b.boot_attempt().unwrap();
    });
    // A two-digit counter: `+10` is 10 tries left (renamed `+9-1`), not a bad entry.
    check("two-digit counter", |b, h| {
        b.stage(Slot::A, &stub_target(h, "1.0"), 3).unwrap();
        b.mark_good(Slot::A).unwrap();
        b.stage(Slot::B, &stub_target(h, "1.1"), 10).unwrap();
    });
    // Every entry bad: systemd-boot still boots the first of them (newest version).
    check("all bad", |b, h| {
        b.stage(Slot::A, &stub_target(h, "1.0"), 1).unwrap();
        b.boot_attempt().unwrap();
        b.stage(Slot::B, &stub_target(h, "1.1"), 1).unwrap();
        b.boot_attempt().unwrap();
    });
}
