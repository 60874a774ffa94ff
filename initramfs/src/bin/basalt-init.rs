//! `basalt-init`: PID 1 of the Basalt initramfs. All logic is in `basalt_initramfs::boot`;
//! this file only guards against running outside an initramfs and turns every failure
//! (panics included) into a logged reason, a record for the next boot (`failrec`) and a
//! reboot. It never returns from `main`: PID 1
//! exiting would panic the kernel instead of letting the boot counter work.

use basalt_initramfs::reason::{Failure, Reason};
use basalt_initramfs::sys::{self, Log};
use basalt_initramfs::{boot, failrec, Error};

fn main() {
    if sys::getpid() != 1 {
        eprintln!(
            "basalt-init: BASALT-INIT FAILED reason={}: must run as PID 1 of an initramfs (it mounts, switches root and reboots)",
            Reason::NotPid1
        );
        std::process::exit(2);
    }
    std::panic::set_hook(Box::new(|info| {
        let mut log = Log::default();
        log.open_kmsg();
        log.fail(&format!(
            "BASALT-INIT FAILED reason={}: {info}",
            Reason::Panic
        ));
        failrec::record_failure(&mut log, Reason::Panic, &info.to_string());
        reboot_now(&mut log);
    }));
    let mut log = Log::default();
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let failure: Failure = boot::run(&mut log, &args);
    log.fail(&failure.line());
    failrec::record_failure(&mut log, failure.reason, &failure.error.to_string());
    reboot_now(&mut log);
}

/// Sync, give the console a moment to drain, reboot. If the kernel refuses, exit: PID 1
/// exiting panics the kernel, which reboots with `panic=N` (the boot entry sets it).
fn reboot_now(log: &mut Log) -> ! {
    sys::sync();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let e = sys::reboot();
    log.fail(&format!(
        "reboot failed: {}",
        Error::SwitchRoot {
            step: "reboot",
            source: e
        }
    ));
    std::process::exit(1);
}
