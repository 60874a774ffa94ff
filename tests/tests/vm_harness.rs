//! Self-tests of the QEMU harness with real guests: the Debian kernel (fetched into the shared
//! cache on first use) booted directly through its PVH entry, and through OVMF → systemd-boot
//! from a GPT disk whose ESP was written with mtools. Each guest computes its marker
//! (`$((6 * 7))`), so the marker text exists nowhere but in the guest's output.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use basalt_tests::elf::Elf64;
use basalt_tests::fixture::{esp_list, esp_read, BusyboxInitramfs, EspDisk, Source, INIT_PRELUDE};
use basalt_tests::kernel::KernelTree;
use basalt_tests::vm::{scenario_dir, GuestExit, VmConfig};
use basalt_tests::Error;

/// Generous: a direct boot takes ≈4 s idle under TCG, several times that on a loaded host.
const DIRECT_BOOT: Duration = Duration::from_secs(120);
/// OVMF + systemd-boot + kernel ≈10 s idle.
const UEFI_BOOT: Duration = Duration::from_secs(240);
const SHUTDOWN: Duration = Duration::from_secs(60);
/// systemd-boot's vendor GUID for its variables (LoaderEntrySelected, LoaderBootCountPath).
const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
const CMDLINE: &str = "console=ttyS0 panic=-1";

fn initramfs(dir: &Path, body: &str) -> Result<std::path::PathBuf> {
    let path = dir.join("initrd.img");
    BusyboxInitramfs::new(format!("{INIT_PRELUDE}{body}"))
        .build(&path)
        .context("building the busybox initramfs")?;
    Ok(path)
}

#[test]
fn kernel_tree_is_complete_and_cached() -> Result<()> {
    let kernel = KernelTree::shared()?;
    // Debian names the image package after the release it carries.
    ensure!(
        kernel.package == format!("linux-image-{}", kernel.version),
        "{kernel:?}"
    );
    let mut vmlinux = Elf64::open(&kernel.vmlinux)?;
    ensure!(vmlinux.has_pvh_entry()?, "no PVH note in {kernel:?}");
    let efivarfs = kernel.load_order(&["efivarfs"])?;
    ensure!(
        efivarfs
            .iter()
            .all(|m| kernel.modules_dir.join(m).is_file()),
        "{efivarfs:?}"
    );
    let stamp = std::fs::metadata(&kernel.vmlinux)?.modified()?;
    let again = KernelTree::shared()?;
    ensure!(again == kernel, "second lookup differs: {again:?}");
    ensure!(
        std::fs::metadata(&again.vmlinux)?.modified()? == stamp,
        "the cached vmlinux was rewritten"
    );
    Ok(())
}

/// (a) PVH direct boot → busybox /init prints a marker → `poweroff -f` → QEMU exits cleanly.
#[test]
fn direct_boot_pvh_vmlinux_to_busybox_and_power_off() -> Result<()> {
    let kernel = KernelTree::shared()?;
    let dir = scenario_dir("harness-direct-boot")?;
    let initrd = initramfs(
        dir.as_path(),
        "echo \"harness: direct boot reached init $((6 * 7))\"\npoweroff -f\n",
    )?;
    let config =
        VmConfig::direct(dir.as_path(), &kernel.vmlinux, Some(initrd), CMDLINE).no_reboot(true);
    let mut vm = config.spawn()?;
    let at = vm.expect("direct boot reached init 42", DIRECT_BOOT)?;
    vm.expect_poweroff(SHUTDOWN)?;
    eprintln!(
        "direct PVH boot: marker after {:.1} s, QEMU gone after {:.1} s",
        at.as_secs_f64(),
        vm.elapsed().as_secs_f64()
    );
    let log = std::fs::read_to_string(vm.serial_log())?;
    ensure!(
        log.contains("direct boot reached init 42"),
        "the serial log file misses the marker"
    );
    Ok(())
}

/// The failure paths: `expect_any` tells a reboot from success, `-no-reboot` turns the reboot
/// into an exit that `wait_exit` classifies, and a marker that never comes kills QEMU by pid
/// with the console tail in the error.
#[test]
fn reboot_is_told_from_power_off_and_timeouts_kill_qemu() -> Result<()> {
    let kernel = KernelTree::shared()?;
    let dir = scenario_dir("harness-reboot-exit")?;
    let initrd = initramfs(
        dir.as_path(),
        "echo \"harness: about to reboot $((6 * 7)) on $(nproc) cpus\"\nreboot -f\n",
    )?;
    // Two vCPUs (`-smp 2 -cpu qemu64,+rdrand`), as a systemd userspace will use.
    let config = VmConfig::direct(dir.as_path(), &kernel.vmlinux, Some(initrd), CMDLINE)
        .cpus(2)
        .no_reboot(true);
    let mut vm = config.spawn()?;
    let which = vm.expect_any(
        &["never printed", "about to reboot 42 on 2 cpus"],
        DIRECT_BOOT,
    )?;
    ensure!(which == 1, "expect_any picked {which}");
    ensure!(vm.wait_exit(SHUTDOWN)? == GuestExit::Reboot);

    let dir = scenario_dir("harness-timeout-kill")?;
    let initrd = initramfs(
        dir.as_path(),
        "echo \"harness: waiting forever $((6 * 7))\"\nwhile true; do sleep 60; done\n",
    )?;
    let config =
        VmConfig::direct(dir.as_path(), &kernel.vmlinux, Some(initrd), CMDLINE).no_reboot(true);
    let mut vm = config.spawn()?;
    vm.expect("waiting forever 42", DIRECT_BOOT)?;
    let pid = vm.pid();
    let err = vm
        .expect("never printed", Duration::from_secs(2))
        .expect_err("a marker that is never printed must time out");
    ensure!(matches!(err, Error::MarkerTimeout { .. }), "{err}");
    let text = err.to_string();
    ensure!(
        text.contains("waiting forever 42") && text.contains("serial-1.log"),
        "the error lacks the console tail or the log path:\n{text}"
    );
    // Reaped, so the pid no longer exists (kill(pid, 0) fails with ESRCH).
    let alive = std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()?
        .success();
    ensure!(!alive, "QEMU pid {pid} survived the timeout");
    Ok(())
}

/// A guest reboot inside one QEMU run (firmware again, same disks), then a second QEMU run on
/// the same disk image. The main disk carries the state; the read-only data disk (found by
/// its serial) carries a payload from the host and must refuse writes.
#[test]
fn disk_survives_a_reboot_in_run_and_a_new_run_and_data_disks_are_read_only() -> Result<()> {
    let kernel = KernelTree::shared()?;
    let dir = scenario_dir("harness-disk-persistence")?;
    let main = dir.as_path().join("main.img");
    let data = dir.as_path().join("data.img");
    std::fs::write(&main, vec![0u8; 1 << 20])?;
    let mut payload = b"payload-from-the-host\n".to_vec();
    payload.resize(4096, 0);
    std::fs::write(&data, &payload)?;
    // The disks by their virtio serial, not by name: the kernel names them in probe order
    // (see tests/README.md); the main disk has no serial.
    let body = r#"
for d in /sys/block/vd*; do
    if [ "$(cat "$d/serial" 2>/dev/null)" = data-1 ]; then DATA=/dev/${d##*/}; else MAIN=/dev/${d##*/}; fi
done
[ -b "$MAIN" ] && [ -b "$DATA" ] || { echo "harness: disks not found: main=$MAIN data=$DATA"; poweroff -f; }
case "$(head -c 6 $MAIN)" in
    boot-1)
        echo "boot-2 $(head -n 1 $DATA)" | dd of=$MAIN conv=notrunc 2>/dev/null
        sync
        echo "harness: second boot saw boot-1 $((6 * 7))"
        poweroff -f ;;
    boot-2)
        echo "harness: run 2 found [$(head -n 1 $MAIN)]"
        poweroff -f ;;
    *)
        echo boot-1 | dd of=$MAIN conv=notrunc 2>/dev/null
        sync
        if echo x | dd of=$DATA 2>/dev/null; then w=writable; else w=read-only; fi
        echo "harness: first boot wrote; data disk $w $((6 * 7))"
        reboot -f ;;
esac
"#;
    let initrd = dir.as_path().join("initrd.img");
    BusyboxInitramfs::new(format!("{INIT_PRELUDE}{body}"))
        .modules(&kernel, &["virtio_pci", "virtio_blk"])?
        .build(&initrd)?;
    let config = VmConfig::direct(dir.as_path(), &kernel.vmlinux, Some(initrd), CMDLINE)
        .disk(&main)
        .data_disk(&data);

    let mut run1 = config.spawn()?;
    run1.expect("first boot wrote; data disk read-only 42", DIRECT_BOOT)?;
    let second = run1.expect("second boot saw boot-1 42", DIRECT_BOOT)?;
    run1.expect_poweroff(SHUTDOWN)?;
    drop(run1);
    let mut run2 = config.spawn()?;
    let third = run2.expect("run 2 found [boot-2 payload-from-the-host]", DIRECT_BOOT)?;
    run2.expect_poweroff(SHUTDOWN)?;
    eprintln!(
        "direct PVH boot, reboot in run: second boot at {:.1} s; new run: {:.1} s",
        second.as_secs_f64(),
        third.as_secs_f64()
    );
    ensure!(run2.serial_log().ends_with("serial-2.log"));
    ensure!(std::fs::read(&main)?.starts_with(b"boot-2 payload-from-the-host\n"));
    ensure!(
        std::fs::read(&data)? == payload,
        "the read-only disk changed"
    );
    Ok(())
}

/// (b) OVMF → systemd-boot (boot counting) → the same kernel → an initramfs that reads the
/// loader's EFI variables through efivarfs.
#[test]
fn uefi_systemd_boot_counts_tries() -> Result<()> {
    let kernel = KernelTree::shared()?;
    let dir = scenario_dir("harness-uefi-systemd-boot")?;
    let body = format!(
        r#"mount -t efivarfs efivarfs /sys/firmware/efi/efivars
read_var() {{ dd if=/sys/firmware/efi/efivars/$1-{LOADER_GUID} bs=1 skip=4 2>/dev/null | tr -d '\000'; }}
echo "harness: uefi boot reached init $((6 * 7))"
echo "harness: LoaderBootCountPath=[$(read_var LoaderBootCountPath)]"
echo "harness: LoaderEntrySelected=[$(read_var LoaderEntrySelected)]"
poweroff -f
"#
    );
    let initrd = dir.as_path().join("initrd.img");
    BusyboxInitramfs::new(format!("{INIT_PRELUDE}{body}"))
        .modules(&kernel, &["efivarfs"])?
        .build(&initrd)?;
    let entry = format!(
        "title Basalt harness self-test\nversion {}\nlinux /basalt/vmlinuz\n\
         initrd /basalt/initrd.img\noptions {CMDLINE}\n",
        kernel.version
    );
    let disk = dir.as_path().join("disk.img");
    EspDisk::new(64)
        .file(
            "EFI/BOOT/BOOTX64.EFI",
            Source::Host("/usr/lib/systemd/boot/efi/systemd-bootx64.efi".into()),
        )
        .file(
            "loader/loader.conf",
            Source::Bytes(b"timeout 0\neditor no\n".to_vec()),
        )
        .file("loader/entries/test+3.conf", Source::Bytes(entry.into()))
        .file("basalt/vmlinuz", Source::Host(kernel.vmlinuz.clone()))
        .file("basalt/initrd.img", Source::Host(initrd))
        .build(&disk)?;
    ensure!(esp_list(&disk, "loader/entries")? == ["test+3.conf"]);

    let mut vm = VmConfig::uefi(dir.as_path())
        .disk(&disk)
        .no_reboot(true)
        .spawn()?;
    let at = vm.expect("uefi boot reached init 42", UEFI_BOOT)?;
    vm.expect_poweroff(SHUTDOWN)?;
    eprintln!(
        "OVMF → systemd-boot → kernel → init: marker after {:.1} s, QEMU gone after {:.1} s",
        at.as_secs_f64(),
        vm.elapsed().as_secs_f64()
    );
    let console = vm.console();
    let value = |name: &str| {
        console
            .split(&format!("{name}=["))
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .unwrap_or_default()
            .to_string()
    };
    // BLS boot counting: `+3` becomes `+2-1` (2 left, 1 done) before the kernel starts.
    let count_path = value("LoaderBootCountPath");
    ensure!(
        count_path == "\\loader\\entries\\test+2-1.conf",
        "LoaderBootCountPath was {count_path:?}"
    );
    // The entry id: systemd-boot 252 uses the file name as found, before the rename; later
    // versions strip the counter.
    let selected = value("LoaderEntrySelected");
    ensure!(
        selected == "test+3.conf" || selected == "test.conf",
        "LoaderEntrySelected was {selected:?}"
    );
    let entries = esp_list(&disk, "loader/entries")?;
    ensure!(entries == ["test+2-1.conf"], "ESP entries: {entries:?}");
    let renamed = esp_read(&disk, "loader/entries/test+2-1.conf")?;
    ensure!(String::from_utf8_lossy(&renamed).contains("Basalt harness self-test"));
    Ok(())
}

/// (e) Serial input: a busybox shell on ttyS0 is driven through [`basalt_tests::vm::Vm::shell`]
/// (what the updater's VM scenarios do with a test image's root shell): computed output, exit
/// statuses, a subshell `exit`, an oversized command refused, then a typed `poweroff`.
#[test]
fn serial_shell_runs_commands_and_reports_status() -> Result<()> {
    let kernel = KernelTree::shared()?;
    let dir = scenario_dir("harness-serial-shell")?;
    let initrd = initramfs(
        dir.as_path(),
        "echo 'harness: shell on ttyS0'\nsh </dev/ttyS0 >/dev/ttyS0 2>&1\npoweroff -f\n",
    )?;
    let config =
        VmConfig::direct(dir.as_path(), &kernel.vmlinux, Some(initrd), CMDLINE).no_reboot(true);
    let mut vm = config.spawn()?;
    vm.expect("harness: shell on ttyS0", DIRECT_BOOT)?;
    vm.wait_for_shell(DIRECT_BOOT)?;
    let out = vm.shell("echo sum=$((20+22)); echo err >&2", SHUTDOWN)?;
    ensure!(out.status == 0, "{out:?}");
    ensure!(
        out.output.contains("sum=42") && out.output.contains("err"),
        "{out:?}"
    );
    ensure!(
        !out.output.contains("$((20+22))"),
        "the typed line leaked: {out:?}"
    );
    let out = vm.shell("false", SHUTDOWN)?;
    ensure!(out.status == 1, "{out:?}");
    // `exit` leaves only the subshell: the next command still runs.
    let out = vm.shell("exit 7", SHUTDOWN)?;
    ensure!(out.status == 7, "{out:?}");
    let out = vm.shell("cat /proc/cmdline", SHUTDOWN)?;
    ensure!(
        out.status == 0 && out.output.contains("panic=-1"),
        "{out:?}"
    );
    ensure!(
        vm.shell("a\nb", SHUTDOWN).is_err(),
        "a two-line command was accepted"
    );
    vm.send("poweroff -f\n")?;
    match vm.wait_exit(SHUTDOWN)? {
        GuestExit::PowerOff => Ok(()),
        other => anyhow::bail!("guest ended with {other:?}"),
    }
}
