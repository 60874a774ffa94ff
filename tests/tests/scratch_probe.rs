use std::time::Duration;
use anyhow::Result;
use basalt_tests::kernel::KernelTree;
use basalt_tests::vm::{scenario_dir, VmConfig};

const STEP: Duration = Duration::from_secs(600);

#[test]
fn probe() -> Result<()> {
    let kernel = KernelTree::shared()?;
    let dir = scenario_dir("scratch-probe")?;
    let w = basalt_tests::workspace_root().join("target/bench/boot");
    let config = VmConfig::direct(&dir, &kernel.vmlinux, Some(w.join("reference-initrd.img")), "root=/dev/vda2 rw console=ttyS0 panic=-1")
        .disk("/tmp/refdbg.img").memory_mib(1536).cpus(2).no_reboot(true);
    let mut vm = config.spawn()?;
    vm.wait_for_shell(STEP)?;
    for cmd in [
        "sleep 60; systemctl list-jobs --no-pager",
        "systemctl status containerd --no-pager | head -30",
        "journalctl -b -u containerd --no-pager -o short-monotonic | tail -30",
        "systemctl is-system-running",
        "systemd-analyze blame --no-pager | head -20",
        "cat /proc/loadavg; ps aux --sort=-%cpu | head -8",
    ] {
        let out = vm.shell(cmd, STEP)?;
        println!("==== {cmd} (rc {})\n{}", out.status, out.output);
    }
    vm.send("poweroff\n")?;
    vm.wait_exit(STEP)?;
    Ok(())
}
