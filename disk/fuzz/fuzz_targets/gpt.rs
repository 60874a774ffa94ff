//! Fuzz the GPT reader, layout recognition, slot inventory and the GPT-priority backend.
//!
//! A raw random disk almost never gets past the signature and CRC checks, so besides raw
//! bytes the input can patch a valid Basalt template's primary and/or backup copy (header
//! then entries) and optionally recompute the CRCs, which reaches the field validation,
//! layout and label parsing. Whatever the bytes: no panic, and writes stay inside the disk.
#![no_main]

use std::io::Cursor;
use std::path::Path;
use std::sync::OnceLock;

use basalt_disk::gpt::Guid;
use basalt_disk::layout::{create_layout, LayoutSpec};
use basalt_disk::{BootControl, BootTarget, GptPrio, Inventory, Slot};
use libfuzzer_sys::fuzz_target;

const SECTOR: usize = 512;

fn template() -> &'static Vec<u8> {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        let spec = LayoutSpec {
            disk_size: 256 << 10,
            esp_size: 16 << 10,
            usr_size: 32 << 10,
            verity_size: 4 << 10,
            slot_reserve: 4 << 10,
            root_size: None,
            align: 4 << 10,
        };
        let mut dev = Cursor::new(vec![0u8; spec.disk_size as usize]);
        let mut n = 0u8;
        let mut guids = || {
            n += 1;
            Ok(Guid([n; 16]))
        };
        if create_layout(&mut dev, Path::new("fuzz"), &spec, &mut guids).is_err() {
            return vec![0u8; spec.disk_size as usize];
        }
        dev.into_inner()
    })
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Overwrite one copy (header at `hdr`, entries at `arr`) with `patch`, optionally fixing CRCs.
fn patch_copy(disk: &mut [u8], hdr: usize, arr: usize, patch: &[u8], fix: bool) {
    let (h, e) = patch.split_at(patch.len().min(92));
    disk[hdr..hdr + h.len()].copy_from_slice(h);
    let e = &e[..e.len().min(128 * 128)];
    disk[arr..arr + e.len()].copy_from_slice(e);
    if fix {
        let ecrc = crc32(&disk[arr..arr + 128 * 128]);
        disk[hdr + 88..hdr + 92].copy_from_slice(&ecrc.to_le_bytes());
        disk[hdr + 16..hdr + 20].fill(0);
        let hcrc = crc32(&disk[hdr..hdr + 92]);
        disk[hdr + 16..hdr + 20].copy_from_slice(&hcrc.to_le_bytes());
    }
}

fn exercise(disk: Vec<u8>, cmdline: Option<&str>, write: bool) {
    let path = Path::new("fuzz");
    let mut dev = Cursor::new(disk);
    let len = dev.get_ref().len();
    let _ = Inventory::read(&mut dev, path, cmdline);
    let mut gp = GptPrio::new(dev, path);
    let _ = gp.status();
    if write {
        let t = BootTarget {
            version: String::new(),
            usr_hash: String::new(),
            kernel: None,
            initrd: None,
            options: String::new(),
        };
        let _ = gp.boot_attempt();
        let _ = gp.stage(Slot::B, &t, 3);
        let _ = gp.mark_good(Slot::A);
        let _ = gp.cancel(Slot::B);
        let _ = gp.rollback(Slot::A);
        let _ = gp.status();
        // Writes never grow the disk.
        assert_eq!(gp.into_inner().into_inner().len(), len);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let cmdline = match (flags >> 4) & 3 {
        0 => None,
        1 => Some("usrhash=0101010101010101010101010101010102020202020202020202020202020202"),
        2 => Some("usrhash=zz"),
        _ => std::str::from_utf8(rest).ok(),
    };
    let write = flags & 8 != 0;
    let disk = match flags & 3 {
        0 => rest.to_vec(),
        mode => {
            let mut disk = template().clone();
            let last = disk.len() / SECTOR - 1;
            let fix = flags & 4 != 0;
            if mode & 1 != 0 {
                patch_copy(&mut disk, SECTOR, 2 * SECTOR, rest, fix);
            }
            if mode & 2 != 0 {
                patch_copy(&mut disk, last * SECTOR, (last - 32) * SECTOR, rest, fix);
            }
            disk
        }
    };
    exercise(disk, cmdline, write);
});
