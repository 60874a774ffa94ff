//! Nothing on the writable root partition, and nothing on the kernel command line, changes
//! what runs after basalt-init: the attacker (root on the node, or the disk in hand) owns
//! the root partition's file system and the boot entry's options, but not the signed `/usr`.
//! Three attacks on private copies of the minimal v1 disk, each booted directly (PVH
//! `vmlinux` + the release's initramfs and command line):
//!
//! 1. **Root entries redirect `/usr`**: `usr` is a symlink to `/sysroot/evil` (the verified
//!    erofs would be mounted there and `/usr` would resolve to the attacker's tree after
//!    switch_root), `run` a symlink into `/usr` (the moved `/run` would shadow it), `bin` a
//!    real directory with another `sh`, `lib64` a real directory with another
//!    `ld-linux-x86-64.so.2`. basalt-init must repair every entry (logged) and boot the
//!    release's own init; the minimal init then prints the links as the system sees them.
//! 2. **`init=` on the writable root**: `init=/evil-init`. Refused (`init-not-verified`).
//! 3. **`basalt.verity=logging` with altered `/usr` bytes** (the init script's text changed
//!    under the signed root hash): a product initramfs ignores the option, dm-verity stays
//!    `restart_on_corruption`, the read of the altered block restarts the machine.
//!
//! In each case the attacker's program prints [`ATTACKER_MARKER`]; it must never appear.
//! All three run even when one fails, and the failure lists every attack that got through.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Result};
use basalt_disk::{Inventory, Slot, SlotPart};
use basalt_tests::artifacts::{minimal_image, MinimalImage};
use basalt_tests::hostile::{
    attacker_program, direct_boot, put_busybox, put_file, put_link, replace_in_range,
    write_root_tree, ATTACKER_MARKER,
};
use basalt_tests::scenario::expect_markers;
use basalt_tests::vm::{scenario_dir, RESTART_MARKER};

/// One direct boot to the minimal init or a refusal (≈5 s idle under TCG); scaled by
/// `BASALT_VM_TIMEOUT_FACTOR`.
const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(60);
const V1_UP: &str = "BASALT-MINIMAL: userspace up, version=1.0.0";
const FAILED: &str = "BASALT-INIT FAILED reason=";
const LINKS: &str = "BASALT-MINIMAL: links bin=usr/bin sbin=usr/sbin lib=usr/lib lib64=usr/lib64";

#[test]
fn nothing_on_the_root_partition_or_the_command_line_changes_what_runs() -> Result<()> {
    let image = minimal_image("1.0.0")?;
    let root = scenario_dir("boot-hostile-root")?;
    type Case = fn(&Path, &MinimalImage) -> Result<()>;
    let cases: [(&str, &str, Case); 3] = [
        (
            "root entries redirecting /usr",
            "root-entries",
            redirected_usr,
        ),
        ("init= on the writable root", "init", init_on_writable_root),
        (
            "basalt.verity=logging over altered /usr",
            "verity-logging",
            verity_logging,
        ),
    ];
    let mut failed = Vec::new();
    for (name, folder, case) in cases {
        let dir = root.join(folder);
        std::fs::create_dir_all(&dir)?;
        match case(&dir, &image) {
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

/// The tree of case 1, written as the root partition's whole file system.
fn hostile_root_tree(tree: &Path) -> Result<()> {
    // `/usr` → the attacker's tree after switch_root; `evil/` is where the erofs would land.
    put_link(&tree.join("usr"), "/sysroot/evil")?;
    std::fs::create_dir_all(tree.join("evil"))?;
    let fake_usr = tree.join("sysroot/evil");
    put_busybox(&fake_usr.join("bin/busybox"))?;
    put_file(
        &fake_usr.join("lib/basalt/init-minimal"),
        attacker_program("init from a /usr redirected by a symlink on the root partition")
            .as_bytes(),
        0o755,
    )?;
    // The moved /run would land on /usr/lib/basalt and hide the real init.
    put_link(&tree.join("run"), "usr/lib/basalt")?;
    // Shadow directories for the merged-/usr links.
    put_file(
        &tree.join("bin/sh"),
        attacker_program("/bin/sh from a real bin directory").as_bytes(),
        0o755,
    )?;
    put_file(
        &tree.join("lib64/ld-linux-x86-64.so.2"),
        b"\x7fELF not the loader /usr ships",
        0o755,
    )?;
    put_link(&tree.join("sbin"), "/sysroot/evil/bin")?;
    Ok(())
}

fn redirected_usr(dir: &Path, image: &MinimalImage) -> Result<()> {
    let disk = dir.join("disk.img");
    image.copy_disk(&disk)?;
    let tree = dir.join("root-tree");
    hostile_root_tree(&tree)?;
    write_root_tree(&disk, &tree)?;
    let mut vm = direct_boot(dir, image, "")?.disk(&disk).spawn()?;
    let seen = vm.expect_any(&[ATTACKER_MARKER, V1_UP, FAILED], BOOT)?;
    ensure!(seen == 1, "expected the release's init\n{}", vm.excerpt());
    vm.expect(LINKS, STEP)?;
    vm.expect("BASALT-MINIMAL: done", STEP)?;
    vm.expect_poweroff(STEP)?;
    let console = vm.console();
    expect_markers(
        0,
        &console,
        &[
            ("repaired root entry usr", true),
            ("repaired root entry run", true),
            ("repaired root entry bin", true),
            ("repaired root entry sbin", true),
            ("repaired root entry lib64", true),
            ("repaired root entry lib:", false),
            (ATTACKER_MARKER, false),
            ("Kernel panic", false),
        ],
    )?;
    Ok(())
}

fn init_on_writable_root(dir: &Path, image: &MinimalImage) -> Result<()> {
    let disk = dir.join("disk.img");
    image.copy_disk(&disk)?;
    let tree = dir.join("root-tree");
    put_file(
        &tree.join("evil-init"),
        attacker_program("init= pointing at the writable root").as_bytes(),
        0o755,
    )?;
    write_root_tree(&disk, &tree)?;
    let mut vm = direct_boot(dir, image, "init=/evil-init")?
        .disk(&disk)
        .spawn()?;
    let seen = vm.expect_any(&[ATTACKER_MARKER, FAILED, V1_UP], BOOT)?;
    ensure!(seen == 1, "expected a refusal\n{}", vm.excerpt());
    let reason = vm.line_after_cursor(STEP);
    ensure!(
        reason.starts_with("init-not-verified"),
        "reason {:?}\n{}",
        reason.lines().next(),
        vm.excerpt()
    );
    vm.expect(RESTART_MARKER, STEP)?;
    ensure!(!vm.console().contains(ATTACKER_MARKER), "{}", vm.excerpt());
    Ok(())
}

/// The minimal init's first line, and the same number of bytes saying the attacker ran.
const INIT_TEXT: &[u8] = b"BASALT-MINIMAL: userspace up";
const ALTERED_TEXT: &[u8] = b"BASALT-MINIMAL: ATTACKER RAN";

fn verity_logging(dir: &Path, image: &MinimalImage) -> Result<()> {
    let disk = dir.join("disk.img");
    image.copy_disk(&disk)?;
    let inv = Inventory::read_path(&disk, None)?;
    let data = inv.slot_range(Slot::A, SlotPart::Data);
    let at = replace_in_range(&disk, data.offset, data.len, INIT_TEXT, ALTERED_TEXT)
        .map_err(|e| anyhow!("altering the init script in slot A: {e}"))?;
    println!(
        "altered /usr byte range at {at} (data partition offset {})",
        at - data.offset
    );
    let mut vm = direct_boot(dir, image, "basalt.verity=logging")?
        .disk(&disk)
        .spawn()?;
    let seen = vm.expect_any(&[ATTACKER_MARKER, RESTART_MARKER, V1_UP], BOOT)?;
    ensure!(
        seen == 1,
        "expected dm-verity to restart the machine\n{}",
        vm.excerpt()
    );
    let console = vm.console();
    expect_markers(
        0,
        &console,
        &[
            ("ignoring basalt.verity=logging", true),
            ("dm-verity usr status V", true),
            (ATTACKER_MARKER, false),
        ],
    )?;
    Ok(())
}
