//! An edited boot entry cannot boot an unsigned `/usr`: slot B holds v2's erofs under a hash
//! tree re-formatted with another salt (so a root hash no release key signed; v2's old
//! statement block stays after the tree), and slot B's entry is edited to name that hash, as
//! an attacker with write access to the ESP would. basalt-init refuses it
//! (`reason=usrhash-not-signed`), records the reason in an EFI variable and reboots; after
//! three refusals systemd-boot falls back to slot A, whose userspace reads the three records.
//! One QEMU run, reboots inside it.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use basalt_disk::{BootControl, Esp, RootHash, Slot};
use basalt_tests::artifacts::minimal_image;
use basalt_tests::scenario::{
    count_markers, entry_files, esp_backend, expect_fell_back, expect_markers, install_usr,
    kernel_boots, release_target, stage, UsrImage,
};
use basalt_tests::vm::{scenario_dir, VmConfig, RESTART_MARKER};
use basalt_verity::{format_path, hash_tree_size, FormatOptions, BLOCK_SIZE};

/// Boot attempts the updater gives a new slot (the image definition's `boot.tries`).
const TRIES: u32 = 3;
/// One OVMF → systemd-boot → kernel → basalt-init boot (≈10–15 s idle under TCG, 2× loaded);
/// scaled by `BASALT_VM_TIMEOUT_FACTOR`.
const BOOT: Duration = Duration::from_secs(180);
/// A step inside one boot (the reboot after the refusal, the power-off).
const STEP: Duration = Duration::from_secs(60);
/// The attacker's salt: anything but the release's gives a root hash nobody signed.
const OTHER_SALT: [u8; 32] = [0x5a; 32];

const FAILED: &str = "BASALT-INIT FAILED reason=";
const NOT_SIGNED: &str = "usrhash-not-signed";
const USERSPACE_UP: &str = "BASALT-MINIMAL: userspace up, version=";
const V1_UP: &str = "BASALT-MINIMAL: userspace up, version=1.0.0";
const SWITCHING: &str = "basalt-init: switching root to /sysroot";
/// basalt-init after writing its failure record (`basalt_initramfs::failrec`).
const RECORDED: &str = "basalt-init: failure recorded in EFI variable";
/// The minimal image's init prints each record left by earlier boots after this.
const RECORD_LINE: &str = "BASALT-MINIMAL: init-failure: ";

/// `signed`'s erofs under a tree formatted with [`OTHER_SALT`], written to `out` in the
/// release layout (erofs ‖ superblock + tree ‖ statement block), with `signed`'s statement
/// block — which names the old root hash — copied after the new tree unchanged.
fn unsigned_copy(signed: &UsrImage, out: &Path) -> Result<UsrImage> {
    let bytes = fs::read(&signed.path).with_context(|| signed.path.display().to_string())?;
    let data_blocks = signed.hash_offset / BLOCK_SIZE;
    let statement_at = signed.hash_offset + BLOCK_SIZE + hash_tree_size(data_blocks);
    ensure!(
        statement_at < signed.len && signed.len == bytes.len() as u64,
        "{}: no statement block after the tree at {statement_at}",
        signed.path.display()
    );
    let statement = &bytes[usize::try_from(statement_at)?..];
    fs::write(out, &bytes[..usize::try_from(signed.hash_offset)?])
        .with_context(|| out.display().to_string())?;
    let info = format_path(
        out,
        out,
        Some(data_blocks),
        &FormatOptions {
            salt: OTHER_SALT.to_vec(),
            superblock: true,
            uuid: Some([0xa5; 16]),
            hash_offset: signed.hash_offset,
            threads: 0,
        },
    )
    .with_context(|| format!("formatting the verity tree of {}", out.display()))?;
    ensure!(
        info.hash_end() == statement_at,
        "new tree ends at {}, the statement block is expected at {statement_at}",
        info.hash_end()
    );
    let file = OpenOptions::new().write(true).open(out)?;
    file.write_all_at(statement, statement_at)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("appending the old statement block to {}", out.display()))?;
    Ok(UsrImage {
        path: out.to_path_buf(),
        len: statement_at + statement.len() as u64,
        root_hash: RootHash(info.root_hash),
        ..signed.clone()
    })
}

/// Rewrites `usrhash=` in entry `file` on the ESP of `disk`, as someone editing the entry would.
fn edit_usrhash(disk: &Path, file: &str, from: &RootHash, to: &RootHash) -> Result<()> {
    let path = format!("loader/entries/{file}");
    let mut bls = esp_backend(disk)?;
    let text = String::from_utf8(bls.esp().read(&path)?)?;
    let old = format!("usrhash={}", from.to_hex());
    ensure!(
        count_markers(&text, &old) == 1,
        "{path} should name {old} once:\n{text}"
    );
    let edited = text.replace(&old, &format!("usrhash={}", to.to_hex()));
    bls.esp_mut().write_atomic(&path, edited.as_bytes())?;
    Ok(())
}

#[test]
fn edited_entry_with_unsigned_usrhash_is_refused_and_the_other_slot_boots() -> Result<()> {
    let v1 = minimal_image("1.0.0")?;
    let v2 = minimal_image("2.0.0")?;
    let dir = scenario_dir("boot-unsigned")?;
    let disk = dir.join("disk.img");
    v1.copy_disk(&disk)?;

    let signed = UsrImage::of_release(&v2)?;
    let unsigned = unsigned_copy(&signed, &dir.join("usr-unsigned.img"))?;
    ensure!(
        unsigned.root_hash != signed.root_hash,
        "re-salting kept the root hash"
    );
    // Partition UUIDs from the new hash: basalt-init finds the slot by the edited usrhash=.
    install_usr(&disk, Slot::B, &unsigned)?;

    let before = entry_files(&disk)?;
    let [v1_entry] = before.as_slice() else {
        bail!("the v1 disk should hold exactly one (blessed) entry, found {before:?}");
    };
    stage(
        &disk,
        Slot::B,
        &release_target(&v2, &signed.root_hash, ""),
        TRIES,
    )?;
    let staged = entry_files(&disk)?;
    let v2_entry = staged
        .iter()
        .find(|f| *f != v1_entry)
        .with_context(|| format!("no new entry after staging: {staged:?}"))?
        .clone();
    ensure!(
        v2_entry.ends_with(&format!("+{TRIES}.conf")),
        "staged: {staged:?}"
    );
    edit_usrhash(&disk, &v2_entry, &signed.root_hash, &unsigned.root_hash)?;
    ensure!(
        esp_backend(&disk)?.status()?.next == Some(Slot::B),
        "the edited entry would not boot first"
    );
    let v2_spent = v2_entry.replace(&format!("+{TRIES}.conf"), &format!("+0-{TRIES}.conf"));

    let mut vm = VmConfig::uefi(&dir).disk(&disk).spawn()?;
    for attempt in 1..=TRIES {
        let seen = vm.expect_any(&[FAILED, USERSPACE_UP], BOOT)?;
        ensure!(
            seen == 0,
            "attempt {attempt}: a userspace came up instead of basalt-init refusing\n{}",
            vm.excerpt()
        );
        let rest = vm.line_after_cursor(STEP);
        let reason = rest.split_whitespace().next().unwrap_or_default();
        ensure!(
            reason.trim_end_matches(':') == NOT_SIGNED,
            "attempt {attempt}: reason {reason:?}, expected {NOT_SIGNED}\n{}",
            vm.excerpt()
        );
        // basalt-init reboots by itself: the next thing the kernel says is the restart.
        let at = vm.expect(RESTART_MARKER, STEP)?;
        println!(
            "attempt {attempt}: refused, restarted at {:.1} s",
            at.as_secs_f64()
        );
    }
    let seen = vm.expect_any(&[V1_UP, FAILED, USERSPACE_UP], BOOT)?;
    ensure!(
        seen == 0,
        "expected v1 after {TRIES} refusals\n{}",
        vm.excerpt()
    );
    let v1_at = vm.elapsed();
    vm.expect("BASALT-MINIMAL: done", STEP)?;
    vm.expect_poweroff(STEP)?;
    println!(
        "unsigned: v1 up at {:.1} s, powered off at {:.1} s (one QEMU run, {} boots); serial log {}",
        v1_at.as_secs_f64(),
        vm.elapsed().as_secs_f64(),
        TRIES + 1,
        vm.serial_log().display()
    );

    // Per kernel boot (basalt-init's failure line reaches the console twice: kmsg and
    // stderr; boots are counted by the kernel banner): three refusals, each ending in
    // basalt-init's own restart — no panic, no /usr, no shell — then one v1 boot.
    let console = vm.console();
    let boots = kernel_boots(&console);
    ensure!(
        boots.len() == TRIES as usize + 1,
        "{} kernel boots, expected {}\n{}",
        boots.len(),
        TRIES + 1,
        vm.excerpt()
    );
    let refused = format!("{FAILED}{NOT_SIGNED}");
    for (n, boot) in boots.iter().enumerate() {
        let v2_try = n < TRIES as usize;
        expect_markers(
            n,
            boot,
            &[
                (refused.as_str(), v2_try),
                (RECORDED, v2_try),
                (RESTART_MARKER, v2_try),
                (FAILED, v2_try),
                ("basalt-init: dm-verity usr status", !v2_try),
                (SWITCHING, !v2_try),
                (USERSPACE_UP, !v2_try),
                (V1_UP, !v2_try),
                ("Kernel panic", false),
            ],
        )?;
    }

    // The reasons reach the next boot: v1's userspace reads the three records basalt-init
    // left in its EFI variable, each naming the refused slot and its unsigned root hash.
    let record = format!(
        "{RECORD_LINE}v1 reason={NOT_SIGNED} slot=b usrhash={} uptime=",
        unsigned.root_hash.to_hex()
    );
    let v1_boot = boots.last().context("no v1 boot")?;
    ensure!(
        count_markers(v1_boot, &record) == TRIES as usize
            && count_markers(v1_boot, RECORD_LINE) == TRIES as usize,
        "expected {TRIES} failure records like {record:?} in v1's boot:\n{}",
        v1_boot
            .lines()
            .filter(|l| l.contains("init-failure"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let bls = expect_fell_back(&disk, v1_entry, &v2_spent)?;
    let spent = String::from_utf8(bls.esp().read(&format!("loader/entries/{v2_spent}"))?)?;
    ensure!(
        spent.contains(&format!("usrhash={}", unsigned.root_hash.to_hex())),
        "the spent entry lost the edited usrhash:\n{spent}"
    );
    Ok(())
}
