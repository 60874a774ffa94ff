//! The boot chain falls back: a corrupted `/usr` in the freshly updated slot makes dm-verity
//! restart the machine on every try, systemd-boot's counter runs out
//! (`+3 → +2-1 → +1-2 → +0-3`), and the other slot boots. One QEMU run, reboots inside it.
//!
//! ```text
//! disk: v1 (1.0.0) in slot A, blessed entry basalt-1.0.0.conf
//!   + v2 (2.0.0) written into slot B (write_slot), entry basalt-2.0.0+3.conf staged with
//!     basalt.test=read-payload, one 4 KiB block of v2's payload.bin flipped on disk
//! OVMF → systemd-boot → v2 (+3→+2-1) → minimal init reads the payload → "data block N is
//!   corrupted" → restart_on_corruption → v2 (+1-2) → … → v2 (+0-3) → … → v1 → power off
//! ```
//!
//! The console is checked for the three v2 attempts, the kernel's corruption report naming
//! exactly the flipped block, the restart it causes and the final v1 boot; the ESP afterwards
//! (basalt-disk and mtools) for `basalt-2.0.0+0-3.conf` beside the untouched v1 entry.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use basalt_disk::{BootControl, Slot, SlotPart};
use basalt_image::build::rootfs::payload;
use basalt_tests::artifacts::minimal_image;
use basalt_tests::scenario::{
    entry_files, entry_files_mtools, esp_backend, expect_fell_back, expect_markers, install_usr,
    kernel_boots, release_target, slot_range, stage, UsrImage,
};
use basalt_tests::vm::{scenario_dir, VmConfig};

/// Boot attempts the updater gives a new slot (the image definition's `boot.tries`).
const TRIES: u32 = 3;
/// One OVMF → systemd-boot → kernel → basalt-init → minimal init boot: ≈10–15 s idle under
/// TCG, 2× that on a loaded host; scaled by `BASALT_VM_TIMEOUT_FACTOR`.
const BOOT: Duration = Duration::from_secs(180);
/// A step inside one boot (reading 4 MiB through dm-verity, the restart, the power-off).
const STEP: Duration = Duration::from_secs(60);
const BLOCK: usize = 4096;

const V1_UP: &str = "BASALT-MINIMAL: userspace up, version=1.0.0";
const V2_UP: &str = "BASALT-MINIMAL: userspace up, version=2.0.0";
const READING: &str = "BASALT-MINIMAL: reading payload";
const READ_OK: &str = "BASALT-MINIMAL: payload read ok";
const READ_FAILED: &str = "BASALT-MINIMAL: payload read FAILED";
/// `kernel_restart("dm-verity device corrupted")` in drivers/md/dm-verity-target.c, printed
/// by kernel/reboot.c.
const VERITY_RESTART: &str = "reboot: Restarting system with command 'dm-verity device corrupted'";

/// Flips one byte of a 4 KiB block of slot `B`'s data partition that holds payload bytes (the
/// middle of `/usr/share/basalt/payload.bin`), and returns the block's index in the data
/// partition — the number dm-verity reports. The payload is incompressible, so erofs stores
/// it as plain, block-aligned extents even though the image is lz4hc-compressed; the search
/// proves that rather than assuming it.
fn corrupt_payload_block(disk: &Path, usr: &UsrImage) -> Result<u64> {
    let payload = payload();
    let middle = payload.len() / BLOCK / 2 * BLOCK;
    let chunk = &payload[middle..middle + BLOCK];
    let range = slot_range(disk, Slot::B, SlotPart::Data)?;
    ensure!(
        usr.hash_offset <= range.len,
        "erofs image ({} bytes) larger than slot B's data partition ({} bytes)",
        usr.hash_offset,
        range.len
    );
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    let mut data = vec![0u8; usize::try_from(usr.hash_offset)?];
    file.read_exact_at(&mut data, range.offset)
        .with_context(|| format!("reading slot B's data partition of {}", disk.display()))?;
    let hits: Vec<usize> = data
        .chunks_exact(BLOCK)
        .enumerate()
        .filter(|(_, block)| *block == chunk)
        .map(|(i, _)| i)
        .collect();
    let block = match hits.as_slice() {
        [one] => *one,
        [] => bail!(
            "no 4 KiB block of slot B's erofs equals payload bytes [{middle}, {}): the image \
             stores the payload compressed or unaligned; find its blocks through the erofs \
             extent map (fsck.erofs --extract / dump.erofs) instead",
            middle + BLOCK
        ),
        many => bail!("payload bytes at {middle} appear in blocks {many:?} of slot B"),
    };
    // Block 0 is the erofs superblock: corrupting it would fail the mount, not the read.
    ensure!(block > 0, "the payload block is erofs block 0");
    let at = range.offset + (block * BLOCK) as u64;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, at)?;
    byte[0] ^= 0xff;
    file.write_all_at(&byte, at)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("corrupting byte {at} of {}", disk.display()))?;
    Ok(block as u64)
}

#[test]
fn corrupted_usr_runs_out_of_tries_and_the_other_slot_boots() -> Result<()> {
    let v1 = minimal_image("1.0.0")?;
    let v2 = minimal_image("2.0.0")?;
    let dir = scenario_dir("boot-fallback")?;
    let disk = dir.join("disk.img");
    v1.copy_disk(&disk)?;

    // The update, as the updater does it: /usr into the free slot, then a counted entry.
    let before = entry_files(&disk)?;
    let [v1_entry] = before.as_slice() else {
        bail!("the v1 disk should hold exactly one (blessed) entry, found {before:?}");
    };
    ensure!(
        !v1_entry.contains('+'),
        "v1's entry is not blessed: {v1_entry}"
    );
    let usr = UsrImage::of_release(&v2)?;
    install_usr(&disk, Slot::B, &usr)?;
    let target = release_target(&v2, &usr.root_hash, "basalt.test=read-payload");
    stage(&disk, Slot::B, &target, TRIES)?;
    let staged = entry_files(&disk)?;
    let v2_entry = staged
        .iter()
        .find(|f| *f != v1_entry)
        .with_context(|| format!("no new entry after staging: {staged:?}"))?
        .clone();
    ensure!(
        v2_entry.ends_with(&format!("+{TRIES}.conf")) && staged.len() == 2,
        "staged entries: {staged:?}"
    );
    ensure!(
        entry_files_mtools(&disk)? == staged,
        "mtools disagrees on {staged:?}"
    );
    ensure!(
        esp_backend(&disk)?.status()?.next == Some(Slot::B),
        "the staged v2 entry would not boot first"
    );
    // systemd-boot's name for the entry once its tries are used up (Boot Loader Spec's
    // boot counting: `+LEFT-DONE`).
    let v2_spent = v2_entry.replace(&format!("+{TRIES}.conf"), &format!("+0-{TRIES}.conf"));

    let block = corrupt_payload_block(&disk, &usr)?;
    println!("corrupted data block {block} of slot B (payload.bin, 2 MiB in)");
    let corrupted = format!("data block {block} is corrupted");

    // No -no-reboot: the restarts stay inside this one QEMU run.
    let mut vm = VmConfig::uefi(&dir).disk(&disk).spawn()?;
    for attempt in 1..=TRIES {
        let up = vm.expect_any(&[V2_UP, V1_UP], BOOT)?;
        ensure!(
            up == 0,
            "v1 booted after {} v2 attempt(s), expected {TRIES}\n{}",
            attempt - 1,
            vm.excerpt()
        );
        vm.expect(READING, STEP)?;
        let seen = vm.expect_any(&[&corrupted, READ_OK, READ_FAILED, "is corrupted"], STEP)?;
        ensure!(
            seen == 0,
            "attempt {attempt}: expected the kernel to report {corrupted:?}\n{}",
            vm.excerpt()
        );
        let at = vm.expect(VERITY_RESTART, STEP)?;
        println!(
            "v2 attempt {attempt}: dm-verity restart at {:.1} s",
            at.as_secs_f64()
        );
    }
    let up = vm.expect_any(&[V2_UP, V1_UP], BOOT)?;
    ensure!(up == 1, "a fourth v2 boot instead of v1\n{}", vm.excerpt());
    let v1_at = vm.elapsed();
    vm.expect("BASALT-MINIMAL: done", STEP)?;
    vm.expect_poweroff(STEP)?;
    let total = vm.elapsed();
    println!(
        "fallback: v1 up at {:.1} s, powered off at {:.1} s (one QEMU run, {} boots); serial log {}",
        v1_at.as_secs_f64(),
        total.as_secs_f64(),
        TRIES + 1,
        vm.serial_log().display()
    );

    // Per kernel boot (some messages reach the console twice, boots are counted by banner):
    // three v2 boots that each hit the flipped block and restarted, then one clean v1 boot.
    let console = vm.console();
    let boots = kernel_boots(&console);
    ensure!(
        boots.len() == TRIES as usize + 1,
        "{} kernel boots, expected {}\n{}",
        boots.len(),
        TRIES + 1,
        vm.excerpt()
    );
    for (n, boot) in boots.iter().enumerate() {
        let v2_try = n < TRIES as usize;
        expect_markers(
            n,
            boot,
            &[
                (V2_UP, v2_try),
                (READING, v2_try),
                (corrupted.as_str(), v2_try),
                (VERITY_RESTART, v2_try),
                (READ_OK, false),
                (V1_UP, !v2_try),
                ("Kernel panic", false),
            ],
        )?;
    }

    // The ESP after the run: systemd-boot used up v2's tries; v1's entry is untouched.
    expect_fell_back(&disk, v1_entry, &v2_spent)?;
    Ok(())
}
