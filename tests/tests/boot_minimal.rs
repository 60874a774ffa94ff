//! The first real boot of a built image: OVMF → systemd-boot (the slot-A entry on the ESP)
//! → the Debian kernel → basalt-init (modules, signed usrhash, dm-verity `/usr`, root ext4,
//! factory `/etc`) → switch_root → the minimal profile's init script → poweroff. One QEMU run.
//!
//! The root partition of the booted copy is wiped first, so the same boot also exercises the
//! first-boot path a real node takes on a fresh or replaced disk: basalt-init finds the root
//! partition blank, creates ext4 with the mke2fs packed in the initramfs, lays out the root
//! skeleton and copies the factory `/etc`.

use std::time::Duration;

use anyhow::Result;
use basalt_tests::artifacts::minimal_image;
use basalt_tests::vm::{scenario_dir, VmConfig};

const STEP: Duration = Duration::from_secs(120);

#[test]
fn minimal_image_boots_through_the_whole_chain() -> Result<()> {
    let image = minimal_image("1.0.0")?;
    let dir = scenario_dir("boot-minimal")?;
    // The guest writes the root partition (/etc on first boot): boot a private copy.
    let disk = dir.join("disk.img");
    image.copy_disk(&disk)?;
    wipe_root_partition(&disk)?;
    let mut vm = VmConfig::uefi(&dir).disk(&disk).no_reboot(true).spawn()?;

    vm.expect("basalt-init: usrhash is signed", STEP)?;
    vm.expect("is blank: creating ext4", STEP)?;
    vm.expect("basalt-init: dm-verity usr status V", STEP)?;
    let switched = vm.expect("basalt-init: switching root to /sysroot", STEP)?;
    println!(
        "boot time: QEMU start → basalt-init switch_root marker: {:.1} s",
        switched.as_secs_f64()
    );
    vm.expect("BASALT-MINIMAL: userspace up, version=1.0.0", STEP)?;
    vm.expect("BASALT-MINIMAL: /usr is erofs, mounted ro", STEP)?;
    vm.expect("BASALT-MINIMAL: /usr is read-only", STEP)?;
    let done = vm.expect("BASALT-MINIMAL: done", STEP)?;
    vm.expect_poweroff(STEP)?;
    println!(
        "boot time: QEMU start → minimal init done: {:.1} s; serial log {}",
        done.as_secs_f64(),
        vm.serial_log().display()
    );
    Ok(())
}

/// Zero the first MiB of the root partition: no filesystem signature is left, which is what
/// basalt-init treats as blank.
fn wipe_root_partition(disk: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let inv = basalt_disk::slots::Inventory::read_path(disk, None)?;
    let len = inv.root.size.min(1 << 20) as usize;
    let file = std::fs::OpenOptions::new().write(true).open(disk)?;
    file.write_all_at(&vec![0u8; len], inv.root.offset)?;
    file.sync_all()?;
    Ok(())
}
