//! The update agent on an air-gapped node under Secure Boot, with unified kernel images: no
//! NIC at all (`-nic none`); the repository comes on a second, read-only disk (an erofs image
//! of a folder made with `basalt release publish`), mounted by the operator and named as
//! `file://`.
//!
//! Secure Boot is enforcing (OVMF `OVMF_CODE_4M.secboot.fd` with Debian's snakeoil keys
//! enrolled, [`basalt_tests::vm::VmConfig::secure_boot`]). The three releases are built with
//! `BuildRequest::secure_boot` (the snakeoil db key): each ships its signed UKI as an artifact
//! (kind `uki`), and v1's disk boots through a signed systemd-boot and v1's UKI. The agent
//! stages each update as a counted `efi` entry naming the release's UKI (the loose kernel and
//! initrd are not even fetched); the kernel reports Secure Boot enabled on every boot of the
//! run (each kernel banner has its `Secure boot enabled` line). `vm_update_http` keeps
//! covering releases with a loose kernel + initrd.
//!
//! 1. `basaltctl update --reboot` installs 2.0.0; it boots on trial, passes the health gate and
//!    is committed (`basaltctl status --json`).
//! 2. 3.0.0 is staged (`basaltctl update`, no reboot); before rebooting, the operator's shell
//!    overwrites the first blocks of the inactive slot's `/usr` verity partition (what a
//!    failing disk or an attacker with the disk would do). On the reboot systemd-boot tries
//!    3.0.0, basalt-init refuses the damaged `/usr` before setting up dm-verity (its superblock
//!    no longer fits), records why in its EFI failure variable and reboots; once the tries are
//!    used up systemd-boot boots 2.0.0 again.
//!
//!    Why the verity partition and not the erofs data: damaged data is caught by dm-verity
//!    itself while `/usr` is mounted, and with `restart_on_corruption` the kernel restarts at
//!    once — the fallback happens the same way, but no program runs to leave a record, so
//!    the agent could only say "the tries ran out". Damaging what basalt-init checks first
//!    shows the whole chain: refusal, record, report.
//! 3. On that boot the agent reports the rollback with basalt-init's reason (from the EFI
//!    record), visible in `basaltctl history --json`; 2.0.0 stays committed.
//!
//! 4. After power-off, the ESP read on the host: slot B's blessed entry and slot A's used-up
//!    entry are both `efi` entries naming their release's UKI, byte for byte the published
//!    one; no loose kernel is left on the ESP.
//!
//! Six boots, each its own QEMU run on the same disk and variables (`Node`): v1, v2, three
//! refused tries of v3 (each a short boot into the initramfs), v2 again.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use basalt_disk::bls::entry::LoaderType;
use basalt_disk::{BlsBackend, BootControl, BootStatus, Esp, Slot, SlotPart};
use basalt_image::build::image::SecureBootSigner;
use basalt_manifest::ArtifactKind;
use basalt_tests::artifacts::MinimalImage;
use basalt_tests::scenario::slot_range;
use basalt_tests::secure::{esp, snakeoil_signer};
use basalt_tests::story::{
    booted_version, build_secure_releases, Node, Repository, Stderr, GUEST_REPO_MOUNT,
};
use basalt_tests::vm::{data_disk_device, scenario_dir};

/// The kernel's line when the firmware booted it with Secure Boot enforcing.
const SB_ON: &str = "Secure boot enabled";
/// The kernel's banner, once per boot.
const BANNER: &str = "Linux version ";

const SETTLE: Duration = Duration::from_secs(180);
/// Three refused tries of 3.0.0 (firmware + kernel + initramfs each), then 2.0.0's boot.
const FALLBACK: Duration = Duration::from_secs(600);

#[test]
fn air_gapped_update_commits_then_a_corrupted_usr_falls_back_with_basalt_inits_reason() -> Result<()>
{
    let started = Instant::now();
    let n = &mut Stderr;
    let dir = scenario_dir("vm-update-file")?;
    let (key, cert) = snakeoil_signer(&dir)?;
    let releases = build_secure_releases(&SecureBootSigner { key, cert }, n)?;
    let built = started.elapsed();
    for r in [&releases.v1, &releases.v2, &releases.v3] {
        ensure!(
            r.report.facts.version == release_of(r)?.version.to_string(),
            "{}: release.json is another version",
            r.dir.display()
        );
    }
    let repo = Repository::create(&dir.join("repo"), n)?;
    repo.publish(&releases.v2, n)?;
    repo.publish(&releases.v3, n)?;
    // Two repository disks: the first holds 2.0.0 only, so the first update is 2.0.0; the
    // second is swapped in for 3.0.0 (a new disk mounted in place, as an operator would).
    let v2_only = Repository::create(&dir.join("repo-v2"), n)?;
    v2_only.publish(&releases.v2, n)?;
    let disk_v2 = dir.join("repo-v2.erofs");
    v2_only.to_disk(&disk_v2)?;
    let disk_all = dir.join("repo-all.erofs");
    repo.to_disk(&disk_all)?;

    let disk = dir.join("disk.img");
    releases.v1.copy_disk(&disk)?;
    let verity_a = slot_range(&disk, Slot::A, SlotPart::Verity)?;
    check_uki_entry(&disk, Slot::A, &releases.v1, BootStatus::Good)?;

    let vm_started = Instant::now();
    let config = Node::config(&dir, &disk)
        .secure_boot(true)
        .data_disk(&disk_v2)
        .data_disk(&disk_all);
    let mut node = Node::boot(&config, &disk, n)?;
    let status = node.status()?;
    ensure!(
        booted_version(&status) == Some(("A".into(), "1.0.0".into(), "good".into())),
        "{status:#}"
    );

    // 1. 2.0.0 from the first repository disk (data disk 1).
    node.mount_repository_disk(&data_disk_device(1))?;
    node.set_repository(&format!("file://{GUEST_REPO_MOUNT}"), n)?;
    node.update_and_reboot(n)?;
    node.wait_up(n)?;
    node.wait_status("2.0.0 blessed", SETTLE, |s| {
        booted_version(s) == Some(("B".into(), "2.0.0".into(), "good".into()))
    })?;
    let committed_at = vm_started.elapsed();

    // 2. 3.0.0 from the second disk (data disk 2), staged, then its /usr damaged.
    node.mount_repository_disk(&data_disk_device(2))?;
    node.update_staged(n)?;
    let staged = node.status()?;
    ensure!(
        staged["staged_version"] == "3.0.0" && staged["next_boot_slot"] == "A",
        "3.0.0 should be staged in slot A: {staged:#}"
    );
    node.corrupt_usr(Slot::A, verity_a.offset, 4)?;
    node.reboot()?;
    // basalt-init refuses each try; the entry's tries run out; 2.0.0 boots.
    node.vm()
        .expect("BASALT-INIT FAILED reason=", FALLBACK)
        .context("basalt-init should refuse the damaged slot")?;
    node.wait_up(n)?;
    let status = node.wait_status("back on 2.0.0 with the rollback reported", SETTLE, |s| {
        booted_version(s).is_some_and(|(slot, version, _)| slot == "B" && version == "2.0.0")
    })?;
    ensure!(status["current_version"] == "2.0.0", "{status:#}");
    let history = node.history()?;
    let reported = history
        .iter()
        .find(|h| h["kind"] == "rolled-back" || h["kind"] == "boot-refused")
        .with_context(|| format!("no rollback in the history: {history:#?}"))?;
    let reason = reported["detail"].as_str().unwrap_or_default().to_owned();
    ensure!(
        reason.contains("basalt-init refused") && reason.contains("superblock-invalid"),
        "the reason should be basalt-init's record (superblock-invalid): {reported:#}"
    );
    ensure!(
        reported["kind"] == "rolled-back" && reported["from"] == "3.0.0",
        "the rollback should be of 3.0.0: {reported:#}"
    );
    let console = node.console();
    let elapsed = node.poweroff()?;
    // Each kernel's own output (from its banner to the next one) has the line.
    let boots: Vec<&str> = console.split(BANNER).skip(1).collect();
    let kernels = boots.len();
    let unenforced = boots.iter().filter(|b| !b.contains(SB_ON)).count();
    ensure!(
        kernels >= 6 && unenforced == 0,
        "every kernel of the run (v1, v2, three tries of v3, v2) must report Secure Boot \
         enabled: {kernels} kernel banners, {unenforced} of them without `{SB_ON}`"
    );
    check_uki_entry(&disk, Slot::B, &releases.v2, BootStatus::Good)?;
    check_uki_entry(&disk, Slot::A, &releases.v3, BootStatus::Bad)?;
    println!(
        "vm_update_file: releases ready in {:.0} s; VM {:.0} s (2.0.0 committed at {:.0} s); \
         total {:.0} s; {kernels} kernels, each with Secure Boot enabled; reason: {reason}",
        built.as_secs_f64(),
        elapsed.as_secs_f64(),
        committed_at.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}

/// The signed manifest's payload of a release folder (`release.json`).
fn release_of(r: &MinimalImage) -> Result<basalt_manifest::Manifest> {
    let path = r.dir.join("release.json");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(basalt_manifest::Manifest::from_json(&bytes)?)
}

/// On the ESP of `disk`: `slot`'s entry is an `efi` entry in state `status` that boots the
/// UKI of `release`, byte for byte the one its manifest lists; no entry boots a loose kernel
/// and no `vmlinuz` is left in the release's folder.
fn check_uki_entry(
    disk: &std::path::Path,
    slot: Slot,
    release: &MinimalImage,
    status: BootStatus,
) -> Result<()> {
    let esp = esp(disk)?;
    let version = &release.report.facts.version;
    let manifest = release_of(release)?;
    let artifact = manifest
        .artifacts_of(ArtifactKind::Uki)
        .next()
        .with_context(|| format!("release {version} ships no UKI"))?;
    let uki = std::fs::read(release.dir.join(&artifact.name))?;
    let bls = BlsBackend::new(esp);
    let st = bls.status()?;
    ensure!(
        st.slot(slot).status == status && st.slot(slot).version.as_deref() == Some(version),
        "slot {slot} should hold {version} ({status:?}): {st:?}"
    );
    for e in bls.entries()? {
        let Some(b) = e.basalt else { continue };
        ensure!(
            b.loader == LoaderType::Efi && b.initrd.is_empty(),
            "entry {} boots a loose kernel: {b:?}",
            e.file
        );
        if b.slot == slot {
            let on_esp = bls.esp().read(b.linux.trim_start_matches('/'))?;
            ensure!(
                on_esp == uki,
                "slot {slot}'s entry {} boots {} which is not {version}'s UKI {}",
                e.file,
                b.linux,
                artifact.name
            );
            let dir = b
                .linux
                .trim_start_matches('/')
                .rsplit_once('/')
                .map(|(d, _)| d);
            let files = bls.esp().list(dir.unwrap_or_default())?.unwrap_or_default();
            ensure!(
                files
                    .iter()
                    .all(|f| f.name != "vmlinuz" && f.name != "initrd"),
                "a loose kernel is left beside {}: {files:?}",
                b.linux
            );
        }
    }
    Ok(())
}
