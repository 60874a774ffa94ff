//! Product and test images of one definition: the one place that says what a test image adds.
//!
//! A definition (`IMAGE.toml`) describes a product. `basalt image build --variant test` builds
//! the same definition — the same Debian packages, the same staging, the same kernel — plus
//! the test hooks below, and marks it (`VARIANT_ID=test` in os-release). The product `/usr`
//! carries none of them: no unit that reacts to a `basalt.test=` kernel option, no root shell
//! on the serial console. A test asserts that on the built image (`tests/tests/image_build.rs`).
//!
//! What a test image of the `container-host` profile adds (all under `/usr`, enabled there):
//!
//! - **`basalt-boot-report.service`** + `/usr/lib/basalt/boot-report`: inert unless the kernel
//!   command line has [`REPORT_OPTION`]; then, once the boot finished, it prints one
//!   `BASALT-REPORT:` line on the console (systemd state, containerd, mounts, memory, boot
//!   timestamps, the booted entry), `systemd-analyze` figures, and powers the machine off. The
//!   VM tests and `cargo xtask bench` read it.
//! - **A root shell on the serial console** (`serial-getty@ttyS0` with `--autologin root`),
//!   so a VM scenario can drive the guest by typing commands (`basalt_tests::vm::Vm::shell`).
//!   Chosen over a command-running test unit because a scenario can then do anything an
//!   operator would (run `basaltctl`, read the journal, corrupt a file, reboot) without a
//!   new image per question.
//!
//! Other parts of the build ask the variant, never a definition field, whether they may
//! weaken something for tests (e.g. the initramfs honouring `basalt.verity=logging`:
//! [`Variant::is_test`]).

use serde::{Deserialize, Serialize};

/// Which image of a definition is built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// What ships: the definition, nothing else.
    #[default]
    Product,
    /// The definition plus the test hooks of this module; never for production.
    Test,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Product => "product",
            Variant::Test => "test",
        }
    }

    /// A test image: may carry hooks and honour options that a product ignores.
    pub fn is_test(self) -> bool {
        self == Variant::Test
    }

    /// The extra `os-release(5)` lines of this variant.
    pub fn os_release_lines(self) -> &'static str {
        match self {
            Variant::Product => "",
            Variant::Test => "VARIANT=\"Test image: test hooks, root shell on ttyS0; not for production\"\nVARIANT_ID=test\n",
        }
    }

    /// The files this variant adds to a container-host `/usr` (none for the product).
    pub fn container_host_hooks(self) -> Vec<Hook> {
        match self {
            Variant::Product => Vec::new(),
            Variant::Test => vec![
                Hook {
                    path: REPORT_UNIT_PATH,
                    content: REPORT_UNIT,
                    mode: 0o644,
                    wanted_by: Some("multi-user.target"),
                },
                Hook {
                    path: REPORT_SCRIPT_PATH,
                    content: REPORT_SCRIPT,
                    mode: 0o755,
                    wanted_by: None,
                },
                Hook {
                    path: AUTOLOGIN_DROPIN_PATH,
                    content: AUTOLOGIN_DROPIN,
                    mode: 0o644,
                    wanted_by: None,
                },
            ],
        }
    }
}

impl std::str::FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "product" => Ok(Variant::Product),
            "test" => Ok(Variant::Test),
            other => Err(format!("unknown variant {other:?} (product or test)")),
        }
    }
}

/// One file a test image adds, path relative to the staged tree (`usr/…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    pub path: &'static str,
    pub content: &'static str,
    pub mode: u32,
    /// Enabled as a dependency of this target (a link in `usr/lib/systemd/system/T.wants/`).
    pub wanted_by: Option<&'static str>,
}

/// The kernel option that makes `basalt-boot-report.service` report and power off.
pub const REPORT_OPTION: &str = "basalt.test=report";
/// `basalt.test.settle=SECONDS`: how long the report waits after the boot finished before
/// it reads the memory figures (default 0; the bench lets the system settle).
pub const SETTLE_OPTION: &str = "basalt.test.settle";

pub const REPORT_UNIT_PATH: &str = "usr/lib/systemd/system/basalt-boot-report.service";
pub const REPORT_SCRIPT_PATH: &str = "usr/lib/basalt/boot-report";
pub const AUTOLOGIN_DROPIN_PATH: &str =
    "usr/lib/systemd/system/serial-getty@ttyS0.service.d/basalt-test-autologin.conf";

/// The unit that reports how a boot went. `Type=exec`, not `oneshot`: a oneshot job would
/// keep the boot "starting", and the script waits for the boot to finish
/// (`is-system-running --wait`). The script opens `/dev/console` itself: a unit with
/// `StandardOutput=tty` on the console makes systemd stop printing its own status lines
/// (`Reached target …`) while it runs.
pub const REPORT_UNIT: &str = "[Unit]
Description=Basalt boot report (test image only; acts on basalt.test=report)
ConditionKernelCommandLine=basalt.test=report
After=multi-user.target

[Service]
Type=exec
ExecStart=/usr/lib/basalt/boot-report

[Install]
WantedBy=multi-user.target
";

/// The report script: one `BASALT-REPORT:` line (each field `key=value`, no spaces inside a
/// value), `BASALT-REPORT-TIME:` (systemd-analyze time), `-CHAIN:` (the critical chain),
/// `-BLAME:` (the slowest units), `-MEM:` (where the memory is), `-CPU:` (where the CPU time
/// went: the guest, kernel threads, services, bytes read from `/usr`'s device), then power-off. Each line is written with one `printf` so
/// a getty prompt cannot land inside it. Times: `uptime-s` is the guest clock when the line
/// was written (a host that notes when it read the line gets kernel start = then − uptime);
/// `multi-user-s` is systemd's own timestamp of multi-user.target (µs since kernel start);
/// `mem-used-kib` is `MemTotal − MemAvailable` after the settle time, `mem-pcp-kib` the free
/// pages the kernel held in its per-CPU lists at that moment (which `MemFree` leaves out).
/// Also used by `cargo xtask bench` for its reference image (the same hook on both sides).
pub const REPORT_SCRIPT: &str = r#"#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
exec >/dev/console 2>&1
system=$(timeout 300 systemctl is-system-running --wait 2>/dev/null)
[ -n "$system" ] || system=unknown
# Where the CPU went until the boot finished (seconds; read now, before the settle and this
# script's own commands): the whole guest (/proc/stat less idle and iowait), kernel threads
# (children of kthreadd, summed by name without the worker number: dm-verity hashes in
# `kworker-kverityd`), systemd and the services still running (their cgroups' cpu.stat;
# finished oneshots are gone), and what was read from the block device /usr is on.
busy=$(awk '/^cpu /{printf "%.2f", ($2+$3+$4+$7+$8+$9)/100}' /proc/stat)
kstat=$(cat /proc/[0-9]*/stat 2>/dev/null | awk '$4 == 2 || $1 == 2 { n = $2; gsub(/[()]/, "", n); sub(/\/[^-]*/, "", n); t[n] += $14 + $15; all += $14 + $15 } END { printf "%.2f\n", all / 100; for (k in t) if (t[k] >= 5) printf "%.2f=%s\n", t[k] / 100, k }')
kthreads=$(echo "$kstat" | head -n 1)
kthreads_top=$(echo "$kstat" | tail -n +2 | sort -rn | head -n 5 | paste -sd';' -)
units=$(for f in /sys/fs/cgroup/init.scope/cpu.stat /sys/fs/cgroup/system.slice/*/cpu.stat; do u=${f%/cpu.stat}; awk -v u="${u##*/}" '/^usage_usec/ { printf "%.2f=%s\n", $2 / 1000000, u }' "$f" 2>/dev/null; done | sort -rn | head -n 10 | paste -sd';' -)
usrdev=$(readlink -f "$(findmnt -n -o SOURCE --target /usr)")
usrdev=${usrdev##*/}
usr_read=$(awk '{printf "%.1f", $3 * 512 / 1048576}' "/sys/class/block/$usrdev/stat" 2>/dev/null)
settle=0
for opt in $(cat /proc/cmdline); do
    case "$opt" in basalt.test.settle=*) settle=${opt#*=} ;; esac
done
case "$settle" in ''|*[!0-9]*) settle=0 ;; esac
[ "$settle" -gt 0 ] && sleep "$settle"
# Memory in use (MemTotal - MemAvailable) and, read in the same pass, the free pages parked
# in the per-CPU lists (`count:` in /proc/zoneinfo): MemFree leaves them out, so they show
# as "in use", and on 6.1 they range from none to tens of MiB from one boot to the next.
set -- $(awk -v ps="$(getconf PAGESIZE 2>/dev/null || echo 4096)" 'FNR == NR { if ($1 == "MemTotal:") t = $2; if ($1 == "MemAvailable:") a = $2; next } $1 == "count:" { n += $2 } END { print t - a, n * ps / 1024 }' /proc/meminfo /proc/zoneinfo)
mem=${1:-none}
pcp=${2:-none}
containerd=$(systemctl is-active containerd.service 2>/dev/null)
usr=$(findmnt -n -o FSTYPE,OPTIONS /usr | tr -s ' ' ',')
[ -n "$usr" ] || usr=none
root=$(findmnt -n -o FSTYPE,OPTIONS / | cut -d, -f1 | tr -s ' ' ',')
. /usr/lib/os-release
failed=$(systemctl --failed --plain --no-legend 2>/dev/null | awk '{print $1}' | paste -sd, -)
machine_id=$(cat /etc/machine-id 2>/dev/null)
[ -n "$machine_id" ] || machine_id=none
# journald keeps the journal on disk when /var/log/journal exists (it makes the machine's
# folder there at the flush), else in RAM under /run.
[ -d "/var/log/journal/$machine_id" ] && journal=persistent || journal=volatile
# The factory /var was copied (debconf's cache is a plain file there); the dpkg database
# is reachable through its link into /usr.
[ -s /var/cache/debconf/config.dat ] && [ -s /var/lib/dpkg/status ] && var=factory || var=empty
ctr_version=$(ctr version 2>/dev/null | awk '/Server:/{s=1} s && /Version:/{print $2; exit}')
# `[ -r ] &&`: `.` of a missing file makes sh exit (status 2), and the reference has none.
[ -r /run/basalt/boot.env ] && . /run/basalt/boot.env
# Kernel start → multi-user.target, guest clock (µs since boot).
mu=$(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target 2>/dev/null)
mu_s=$(awk -v us="${mu:-0}" 'BEGIN { printf "%.2f", us / 1000000 }')
# The boot entry systemd-boot started (EFI variable: 4 attribute bytes, then UTF-16LE).
# Read through a pipe: efivarfs files do not take the seek `tail -c` would do.
entry=$(cat /sys/firmware/efi/efivars/LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f 2>/dev/null | tail -c +5 | tr -d '\000')
modules=$(wc -l < /proc/modules)
up=$(cut -d' ' -f1 /proc/uptime)
printf '%s\n' "BASALT-REPORT: system=$system containerd=$containerd usr=$usr root=$root version=$VERSION_ID variant=${VARIANT_ID:-product} machine-id=$machine_id var=$var journal=$journal containerd-version=${ctr_version:-none} initramfs-s=${BASALT_INITRAMFS_DONE_SECS:-none} multi-user-s=$mu_s mem-used-kib=$mem mem-pcp-kib=$pcp modules=$modules entry=${entry:-none} failed=${failed:-none} uptime-s=$up"
printf '%s\n' "BASALT-REPORT-TIME: $(systemd-analyze time 2>/dev/null | head -n 1)"
printf '%s\n' "BASALT-REPORT-CHAIN: $(systemd-analyze critical-chain --no-pager multi-user.target 2>/dev/null | grep -o '[a-z.@-]*\.service[^ ]* [^ ]*' | head -n 6 | paste -sd';' -)"
printf '%s\n' "BASALT-REPORT-BLAME: $(systemd-analyze blame --no-pager 2>/dev/null | head -n 12 | awk '{print $2"="$1}' | paste -sd';' -)"
# Where the memory is: kernel-side /proc/meminfo fields (kB) and the 8 largest processes by
# VmRSS (kB=name), read at the same moment as mem-used-kib.
meminfo=$(awk '/^(MemTotal|MemAvailable|MemFree|Active\(file\)|Inactive\(file\)|Unevictable|AnonPages|Shmem|Cached|Buffers|SReclaimable|SUnreclaim|KernelStack|PageTables|Percpu|VmallocUsed):/ { sub(":", "", $1); printf "%s=%s ", $1, $2 }' /proc/meminfo)
top=$(for f in /proc/[0-9]*/status; do awk '/^Name:/ { n = $2 } /^VmRSS:/ { print $2 "=" n }' "$f" 2>/dev/null; done | sort -rn | head -n 8 | paste -sd';' -)
printf '%s\n' "BASALT-REPORT-MEM: ${meminfo}top-rss=${top:-none}"
printf '%s\n' "BASALT-REPORT-CPU: busy-s=$busy usr-dev=${usrdev:-none} usr-read-mib=${usr_read:-none} kthreads-s=${kthreads:-none} kthreads-top=${kthreads_top:-none} units=${units:-none}"
printf '%s\n' "BASALT-REPORT: done, powering off"
systemctl --no-block poweroff
"#;

/// The serial getty logs root in without a password: the VM tests type commands into it.
/// Debian's `serial-getty@.service` line with `--autologin root` added.
pub const AUTOLOGIN_DROPIN: &str = "# Basalt test image only: a root shell on the serial console for VM tests.
[Service]
ExecStart=
ExecStart=-/sbin/agetty -o '-p -f -- \\\\u' --autologin root --noclear --keep-baud 115200,57600,38400,9600 - $TERM
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_product_adds_nothing_and_the_test_image_its_hooks() {
        assert!(Variant::Product.container_host_hooks().is_empty());
        assert_eq!(Variant::Product.os_release_lines(), "");
        let hooks = Variant::Test.container_host_hooks();
        let paths: Vec<&str> = hooks.iter().map(|h| h.path).collect();
        assert_eq!(
            paths,
            [REPORT_UNIT_PATH, REPORT_SCRIPT_PATH, AUTOLOGIN_DROPIN_PATH]
        );
        assert!(hooks.iter().all(|h| h.path.starts_with("usr/")));
        assert!(Variant::Test.os_release_lines().contains("VARIANT_ID=test"));
        assert_eq!("test".parse::<Variant>(), Ok(Variant::Test));
        assert!("prod".parse::<Variant>().is_err());
    }

    #[test]
    fn report_unit_is_inert_without_the_option_and_script_reports_one_line() {
        assert!(REPORT_UNIT.contains(&format!("ConditionKernelCommandLine={REPORT_OPTION}")));
        assert!(!REPORT_UNIT.contains("StandardOutput=tty"));
        let report_lines = REPORT_SCRIPT
            .lines()
            .filter(|l| l.contains("\"BASALT-REPORT: system="))
            .count();
        assert_eq!(report_lines, 1);
        assert!(REPORT_SCRIPT.contains(SETTLE_OPTION));
    }

    #[test]
    fn autologin_keeps_debians_getty_line() {
        assert!(AUTOLOGIN_DROPIN.contains("ExecStart=\n"));
        assert!(AUTOLOGIN_DROPIN.contains("--autologin root"));
        // The unit file has `\\u` (systemd unescapes it to `\u` for agetty's login options).
        assert!(AUTOLOGIN_DROPIN.contains("-- \\\\u'"));
    }
}
