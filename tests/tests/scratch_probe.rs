use anyhow::Result;
use basalt_tests::artifacts::container_host_test_image;
use basalt_tests::vm::{scenario_dir, VmConfig};
use std::time::Duration;

const STEP: Duration = Duration::from_secs(300);

#[test]
fn probe() -> Result<()> {
    let image = container_host_test_image()?;
    let dir = scenario_dir("scratch-probe")?;
    let disk = dir.join("disk.img");
    image.copy_disk(&disk)?;
    let config = VmConfig::uefi(&dir)
        .disk(&disk)
        .memory_mib(1536)
        .cpus(2)
        .no_reboot(true);
    let mut vm = config.spawn()?;
    vm.wait_for_shell(STEP)?;
    for cmd in [
        "systemctl is-system-running --wait",
        "systemd-analyze time",
        "systemd-analyze blame --no-pager | head -40",
        "systemd-analyze critical-chain --no-pager multi-user.target",
        "journalctl -b -u containerd -o short-monotonic --no-pager | head -80",
        "ls -la /etc/udev/ /etc/.updated /var/.updated 2>&1; du -sh /etc /var",
        "systemctl list-timers --all --no-pager",
        "systemctl list-unit-files --state=enabled --no-pager",
        "cat /proc/cmdline; uptime",
        "dmesg | grep -iE 'Freeing unused|Run /init|random|crng' | head",
        "cat /etc/containerd/config.toml | head -30",
    ] {
        let out = vm.shell(cmd, STEP)?;
        println!("==== {cmd} (rc {})\n{}", out.status, out.output);
    }
    vm.send("poweroff\n")?;
    vm.wait_exit(STEP)?;
    Ok(())
}
