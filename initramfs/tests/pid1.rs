//! `basalt-init` as a process: it refuses to run unless it is PID 1, and as PID 1 (of a new
//! PID + mount namespace, made by `unshare` from util-linux) it fails on the host's kernel
//! command line, prints the stable reason line and "reboots" — which, in a PID namespace,
//! only ends the namespace (its init gets SIGHUP). It can never reboot the host: the PID 1
//! guard runs first, and a spawned process is never PID 1 of the initial namespace.

mod common;

use std::os::unix::process::ExitStatusExt;

use basalt_initramfs::cmdline::Cmdline;
use basalt_initramfs::reason::Reason;
use common::peer;

const INIT: &str = env!("CARGO_BIN_EXE_basalt-init");
const PRINTK_DEVKMSG: &str = "/proc/sys/kernel/printk_devkmsg";

#[test]
fn refuses_to_run_unless_pid1() {
    let o = std::process::Command::new(INIT).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("BASALT-INIT FAILED reason=not-pid1"),
        "stderr: {err}"
    );
}

#[test]
fn as_pid1_a_failure_is_reported_and_ends_in_reboot() {
    // basalt-init lifts the (global, not namespaced) /dev/kmsg rate limit and, failing, does
    // not restore it: put the host's value back.
    let devkmsg = std::fs::read_to_string(PRINTK_DEVKMSG).unwrap();
    let o = peer(
        "unshare",
        "util-linux",
        &[
            "--pid",
            "--fork",
            "--mount",
            "--propagation",
            "private",
            INIT,
        ],
        None,
    );
    std::fs::write(PRINTK_DEVKMSG, &devkmsg).unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    // reboot(2) in a PID namespace kills its init with SIGHUP; unshare re-raises it.
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGHUP),
        "status {:?}, stderr: {err}",
        o.status
    );
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap();
    let expected = match Cmdline::parse(&cmdline) {
        Err(e) => Reason::of(&e, Reason::CmdlineInvalid).as_str().to_owned(),
        // A host booted with usrhash= fails later (no module list, no such partition...).
        Ok(_) => String::new(),
    };
    assert!(
        err.contains(&format!("BASALT-INIT FAILED reason={expected}")),
        "stderr: {err}"
    );
}
