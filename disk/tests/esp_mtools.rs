//! Peer interop of the FAT-in-image ESP with mtools and dosfstools on the same image files:
//! what we write, `mdir`/`mtype`/`mcopy`/`minfo` read byte for byte; what `mcopy` writes, we
//! read; `fsck.fat -n` finds no error in an ESP we formatted and changed. These tests fail
//! (not skip) when a tool is missing.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod bls_common;

use std::path::Path;
use std::process::Command;

use basalt_disk::bls::entry::BasaltEntry;
use basalt_disk::bls::version::{ReleaseVersion, StageKey};
use basalt_disk::bls::{self, BlsBackend, ENTRIES_DIR};
use basalt_disk::esp::{self, format_esp, FatImageEsp};
use basalt_disk::{BootControl, BootStatus, BootTarget, Error, Esp, Slot};
use bls_common::*;

const MIB: u64 = 1024 * 1024;
const OFFSET: u64 = MIB;
const LEN: u64 = 64 * MIB;
/// Slot B's version: a pre-release with build metadata, so the names mtools sees carry the
/// build `+` as `_`.
const B_VERSION: &str = "1.1.0-rc.1+build.7";

/// Run a peer tool; panics with the Debian package to install when it is missing.
fn tool(cmd: &str, package: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(cmd)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} ({e}): install the Debian package {package}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn mtools(cmd: &str, args: &[&str]) -> Vec<u8> {
    tool(cmd, "mtools", args).stdout
}

fn img_arg(img: &Path, offset: u64) -> String {
    format!("{}@@{offset}", img.display())
}

/// `fsck.fat -n` on the ESP range, extracted to its own file (fsck.fat takes no offset).
fn fsck(img: &Path, offset: u64, len: u64) -> String {
    let part = img.with_extension("esp");
    let data = std::fs::read(img).unwrap();
    std::fs::write(&part, &data[offset as usize..(offset + len) as usize]).unwrap();
    let out = tool("fsck.fat", "dosfstools", &["-n", part.to_str().unwrap()]);
    std::fs::remove_file(&part).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sparse_image(dir: &Path, size: u64) -> std::path::PathBuf {
    let img = dir.join("disk.img");
    std::fs::File::create(&img).unwrap().set_len(size).unwrap();
    img
}

#[test]
fn esp_we_build_reads_the_same_in_mtools_and_passes_fsck() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), 80 * MIB);
    let sd_boot = Path::new(esp::SYSTEMD_BOOT_EFI);
    assert!(
        sd_boot.is_file(),
        "{} missing: install the Debian package systemd-boot-efi",
        sd_boot.display()
    );
    let a = target(dir.path(), "1.0.0");
    let fat = bls::install_boot_esp(&img, OFFSET, LEN, sd_boot, &[(Slot::A, a)]).unwrap();
    let mut b = BlsBackend::new(fat);
    b.stage(Slot::B, &target(dir.path(), B_VERSION), 3).unwrap();
    assert_eq!(b.boot_attempt().unwrap(), Some(Slot::B)); // a counter rename on FAT
    let st = b.status().unwrap();
    assert_eq!(st.slot(Slot::A).status, BootStatus::Good);
    assert_eq!(
        st.slot(Slot::B).status,
        BootStatus::Trying {
            tries_left: 2,
            tries_done: 1
        }
    );

    let i = img_arg(&img, OFFSET);
    let info = String::from_utf8_lossy(&mtools("minfo", &["-i", &i, "::"])).into_owned();
    assert!(
        info.contains("disk type=\"FAT32"),
        "not FAT32 for mtools:\n{info}"
    );

    // mdir lists exactly the entries we wrote.
    let listing = String::from_utf8_lossy(&mtools("mdir", &["-b", "-i", &i, "::/loader/entries"]))
        .into_owned();
    let mut theirs: Vec<String> = listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("::/loader/entries/"))
        .map(str::to_string)
        .collect();
    theirs.sort();
    let mut ours: Vec<String> = b.entries().unwrap().into_iter().map(|e| e.file).collect();
    ours.sort();
    assert_eq!(
        theirs,
        ["basalt-1.0.0.conf", "basalt-1.1.0-rc.1_build.7+2-1.conf"]
    );
    assert_eq!(theirs, ours);

    // Valid DOS time stamps (UEFI's FAT driver refuses to rename files dated 1980-00-00).
    let long =
        String::from_utf8_lossy(&mtools("mdir", &["-i", &i, "::/loader/entries"])).into_owned();
    assert!(
        long.contains("1980-01-01") && !long.contains("-00-"),
        "{long}"
    );

    // mtype shows their content byte for byte.
    for name in &ours {
        let p = format!("::/loader/entries/{name}");
        let bytes = mtools("mtype", &["-i", &i, &p]);
        assert_eq!(
            bytes,
            b.esp().read(&esp::join(ENTRIES_DIR, name)).unwrap(),
            "{name}"
        );
    }
    let conf = mtools("mtype", &["-i", &i, "::/loader/loader.conf"]);
    assert_eq!(conf, bls::LOADER_CONF_TEXT.as_bytes());

    // mcopy gets back the boot loader, kernels and initrds as we wrote them.
    let out = dir.path().join("out");
    for (p, want) in [
        ("::/EFI/BOOT/BOOTX64.EFI", std::fs::read(sd_boot).unwrap()),
        ("::/basalt/1.0.0/vmlinuz", kernel_bytes("1.0.0")),
        (
            "::/basalt/1.1.0-rc.1_build.7/initrd",
            initrd_bytes(B_VERSION),
        ),
    ] {
        mtools("mcopy", &["-o", "-i", &i, p, out.to_str().unwrap()]);
        assert_eq!(std::fs::read(&out).unwrap(), want, "{p}");
    }

    // Blessing, cancelling and garbage collection keep the file system clean.
    b.mark_good(Slot::B).unwrap();
    b.rollback(Slot::A).unwrap();
    b.cancel(Slot::B).unwrap();
    let report = fsck(&img, OFFSET, LEN);
    assert!(!report.to_lowercase().contains("dirty"), "{report}");
    let listing =
        String::from_utf8_lossy(&mtools("mdir", &["-b", "-i", &i, "::/basalt"])).into_owned();
    assert_eq!(
        listing.lines().map(str::trim).collect::<Vec<_>>(),
        ["::/basalt/1.0.0/"]
    );
}

#[test]
fn files_mtools_writes_we_read() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), 80 * MIB);
    format_esp(&img, OFFSET, LEN).unwrap();
    let i = img_arg(&img, OFFSET);
    let host = dir.path();
    // A whole Basalt entry set written by mtools alone.
    let t = target(host, "2.0.0");
    let entry = BasaltEntry::new(
        &ReleaseVersion::parse("2.0.0").unwrap(),
        Slot::B,
        StageKey::FIRST,
        &t.usr_hash,
        "quiet",
    );
    let entry_file = host.join("entry.conf");
    std::fs::write(&entry_file, entry.render()).unwrap();
    let long = host.join("a-long-file-name.with.dots.bin");
    let payload: Vec<u8> = (0..100_000u32).map(|x| (x * 7 % 251) as u8).collect();
    std::fs::write(&long, &payload).unwrap();
    for d in [
        "::/loader",
        "::/loader/entries",
        "::/basalt",
        "::/basalt/2.0.0",
        "::/EFI",
    ] {
        mtools("mmd", &["-i", &i, d]);
    }
    let copies = [
        (entry_file.clone(), "::/loader/entries/basalt-2.0.0+3.conf"),
        (t.kernel.clone().unwrap(), "::/basalt/2.0.0/vmlinuz"),
        (t.initrd.clone().unwrap(), "::/basalt/2.0.0/initrd"),
        (long.clone(), "::/EFI/a-long-file-name.with.dots.bin"),
    ];
    for (src, dest) in &copies {
        mtools("mcopy", &["-i", &i, src.to_str().unwrap(), dest]);
    }
    let fat = FatImageEsp::open(&img, OFFSET, LEN).unwrap();
    assert_eq!(
        fat.read("EFI/a-long-file-name.with.dots.bin").unwrap(),
        payload
    );
    assert_eq!(
        fat.read("basalt/2.0.0/vmlinuz").unwrap(),
        kernel_bytes("2.0.0")
    );
    let b = BlsBackend::new(fat);
    let st = b.status().unwrap();
    assert_eq!(st.next, Some(Slot::B));
    assert_eq!(
        st.slot(Slot::B).status,
        BootStatus::Trying {
            tries_left: 3,
            tries_done: 0
        }
    );
    assert_eq!(st.slot(Slot::B).version.as_deref(), Some("2.0.0"));
}

#[test]
fn full_esp_is_a_typed_error_and_keeps_the_entries() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), 10 * MIB);
    let fat = format_esp(&img, OFFSET, 8 * MIB).unwrap();
    let mut b = BlsBackend::new(fat);
    let big = |v: &str, mib: usize| -> BootTarget {
        let mut t = target(dir.path(), v);
        let k = dir.path().join(format!("big-{v}"));
        std::fs::write(&k, vec![0x5a; mib * MIB as usize]).unwrap();
        t.kernel = Some(k);
        t
    };
    b.stage(Slot::A, &big("1.0.0", 4), 3).unwrap();
    b.mark_good(Slot::A).unwrap();
    let before = b.status().unwrap();
    let names_before: Vec<String> = b.entries().unwrap().into_iter().map(|e| e.file).collect();
    let err = b.stage(Slot::B, &big("1.1.0", 5), 3).unwrap_err();
    assert!(matches!(err, Error::EspFull { .. }), "{err}");
    assert_eq!(b.status().unwrap(), before);
    let names_after: Vec<String> = b.entries().unwrap().into_iter().map(|e| e.file).collect();
    assert_eq!(names_after, names_before);
    assert_eq!(
        b.esp().list("basalt").unwrap().unwrap().len(),
        1,
        "1.1 leftovers removed"
    );
    // A kernel that fits after all: the failed attempt left no space behind.
    b.stage(Slot::B, &big("1.1.0", 2), 3).unwrap();
    assert_eq!(b.status().unwrap().next, Some(Slot::B));
    fsck(&img, OFFSET, 8 * MIB);
}
