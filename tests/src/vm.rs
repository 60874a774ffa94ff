//! The QEMU harness: start a guest, follow its serial console, wait for markers, see how it
//! ended, and always kill it by pid when a step fails or the [`Vm`] is dropped.
//!
//! Fixed choices (see /work/shared/notes/environment.md for the measurements behind them):
//! - `-accel tcg` always: `/dev/kvm` on these machines cannot run a stock kernel.
//! - `-machine q35`, `-nodefaults` (no VGA, NIC, CD-ROM, parallel port), `-display none`,
//!   `-nic none`: guests get data only through disks.
//! - Firmware: OVMF from pflash (read-only code + a private, persistent copy of the variable
//!   store), or direct kernel boot (`-kernel/-initrd/-append`, ideally the PVH `vmlinux`).
//! - The serial console is QEMU's stdout; a pump thread appends it to `serial-N.log` in the
//!   work folder and to an in-memory buffer that [`Vm::expect`] searches.
//!
//! A step is "wait until one of these substrings appears after the cursor, or fail after a
//! timeout". Markers are matched on raw bytes anywhere (they can land mid-line, between
//! firmware escape sequences), and each match moves the cursor past itself, so a scenario that
//! crosses a reboot inside one QEMU run expects the same marker twice.
//!
//! ```text
//!   spawn ──► expect(..) ─┬─► expect(..) ... ──► expect_poweroff() ──► Ok
//!                         │ timeout / QEMU exited early / QEMU failed
//!                         └─► QEMU killed by pid, Err with the last console lines
//! ```
//!
//! `-no-reboot` turns a guest reboot into a QEMU exit with status 0, the same as a power-off;
//! [`Vm::wait_exit`] tells them apart from the kernel's last words on the console
//! (`reboot: Power down` / `reboot: Restarting system`).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{ConsoleExcerpt, Error, Result};
use crate::kernel_lines::UserView;
use crate::tool::{ToolError, QEMU};

/// OVMF code for 4 MiB pflash (package `ovmf`), mapped read-only.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// The pristine OVMF variable store each UEFI guest gets a private copy of.
pub const OVMF_VARS_TEMPLATE: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// OVMF code with Secure Boot (and SMM) for [`VmConfig::secure_boot`].
pub const OVMF_CODE_SECURE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// Variables with Debian's test keys enrolled (PK, KEK and db: the "snakeoil" pair in
/// `/usr/share/ovmf/PkKek-1-snakeoil.{key,pem}`, password `snakeoil`): Secure Boot enforcing.
pub const OVMF_VARS_SECURE_TEMPLATE: &str = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd";
/// The kernel's message when powering off (`kernel/reboot.c`, `pr_emerg` so always printed).
pub const POWER_DOWN_MARKER: &str = "reboot: Power down";
/// The kernel's message when restarting.
pub const RESTART_MARKER: &str = "reboot: Restarting system";
/// Set to `1` to copy the guest console to stderr live (`cargo test -- --nocapture`).
pub const ECHO_ENV: &str = "BASALT_VM_ECHO";
/// A factor applied to every timeout, for slow or loaded machines (default 1).
pub const TIMEOUT_FACTOR_ENV: &str = "BASALT_VM_TIMEOUT_FACTOR";

/// Lines of console kept in error messages.
const TAIL_LINES: usize = 80;
/// Lines of QEMU stderr kept in error messages.
const QEMU_TAIL_LINES: usize = 20;
/// How long to wait for QEMU to go away after its console closed or after SIGKILL.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval when waiting for the QEMU process.
const POLL: Duration = Duration::from_millis(20);
/// Bound on `serial-N.log` names tried in one work folder.
const MAX_RUNS: u32 = 10_000;

/// Environment variable overriding where [`scenario_dir`] puts scenario folders.
pub const SCENARIO_ROOT_ENV: &str = "BASALT_VM_DIR";

/// A fresh work folder for scenario `name`: `<workspace>/build/vm/<name>` (or under
/// `$BASALT_VM_DIR`), emptied first and kept afterwards, so the serial logs named in a failure
/// are still there to read. Give each test its own `name`.
pub fn scenario_dir(name: &str) -> Result<PathBuf> {
    let root = std::env::var_os(SCENARIO_ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("build").join("vm"));
    let dir = root.join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|source| Error::Remove {
            path: dir.clone(),
            source,
        })?;
    }
    fs::create_dir_all(&dir).map_err(|source| Error::CreateDir {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// How the guest is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// OVMF from pflash. `vars` is the guest's own variable store: created from
    /// [`OVMF_VARS_TEMPLATE`] when missing, kept (and reused) across runs otherwise.
    Uefi {
        /// The private variable store file.
        vars: PathBuf,
    },
    /// Direct kernel boot, no firmware menu (SeaBIOS loads the kernel; an ELF `vmlinux` with a
    /// PVH note is entered directly, a bzImage through its real-mode setup).
    Direct {
        /// `vmlinux` (PVH) or `vmlinuz`.
        kernel: PathBuf,
        /// The initramfs, if any.
        initrd: Option<PathBuf>,
        /// The kernel command line (add `console=ttyS0` to see the kernel).
        append: String,
    },
}

/// Everything needed to start one guest. Build with [`VmConfig::direct`] or
/// [`VmConfig::uefi`], adjust with the builder methods, start with [`VmConfig::spawn`]; the
/// same config can be spawned again (a second run on the same disk image).
#[derive(Debug, Clone)]
pub struct VmConfig {
    work_dir: PathBuf,
    boot: Boot,
    memory_mib: u32,
    cpus: u32,
    cpu_model: String,
    disk: Option<PathBuf>,
    data_disks: Vec<PathBuf>,
    no_reboot: bool,
    echo: bool,
    extra_args: Vec<OsString>,
    secure_boot: bool,
    setup_mode: bool,
}

impl VmConfig {
    /// A guest booted directly from `kernel` (+ `initrd`) with command line `append`; logs go
    /// to `work_dir`.
    pub fn direct(
        work_dir: impl Into<PathBuf>,
        kernel: impl Into<PathBuf>,
        initrd: Option<PathBuf>,
        append: impl Into<String>,
    ) -> Self {
        Self::new(
            work_dir.into(),
            Boot::Direct {
                kernel: kernel.into(),
                initrd,
                append: append.into(),
            },
        )
    }

    /// A guest booted by OVMF from its disks, with its variable store at
    /// `work_dir/OVMF_VARS.fd` (kept between runs in the same work folder).
    pub fn uefi(work_dir: impl Into<PathBuf>) -> Self {
        let work_dir = work_dir.into();
        let vars = work_dir.join("OVMF_VARS.fd");
        Self::new(work_dir, Boot::Uefi { vars })
    }

    /// A guest with an explicit [`Boot`].
    pub fn new(work_dir: PathBuf, boot: Boot) -> Self {
        Self {
            work_dir,
            boot,
            memory_mib: 512,
            cpus: 1,
            // `+rdrand` lets the guest seed its RNG at once; `-smp 2` without it hung once in
            // getrandom (environment notes).
            cpu_model: "qemu64,+rdrand".to_string(),
            disk: None,
            data_disks: Vec::new(),
            no_reboot: false,
            echo: std::env::var_os(ECHO_ENV).is_some_and(|v| v == "1"),
            extra_args: Vec::new(),
            secure_boot: false,
            setup_mode: false,
        }
    }

    /// Secure Boot capable firmware whose key store starts empty (setup mode, from
    /// [`OVMF_VARS_TEMPLATE`]): nothing is enforced until a PK is enrolled — by systemd-boot's
    /// `secure-boot-enroll`, for instance — after which it is, on the same variable store.
    pub fn secure_boot_setup_mode(mut self) -> Self {
        self.secure_boot = true;
        self.setup_mode = true;
        self
    }

    /// Secure Boot enforcing (UEFI guests only): OVMF with SMM and a secure pflash, the
    /// variable store starting from [`OVMF_VARS_SECURE_TEMPLATE`] (Debian's test keys
    /// enrolled). Only binaries signed with `/usr/share/ovmf/PkKek-1-snakeoil.key` run.
    pub fn secure_boot(mut self, on: bool) -> Self {
        self.secure_boot = on;
        self
    }

    /// Guest memory in MiB (default 512).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Number of vCPUs (default 1; 2 speeds up a systemd userspace under TCG).
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// The `-cpu` model (default `qemu64,+rdrand`).
    pub fn cpu_model(mut self, model: impl Into<String>) -> Self {
        self.cpu_model = model.into();
        self
    }

    /// The main disk image (raw, read-write, virtio): the guest's `/dev/vda`, and what OVMF
    /// boots from.
    pub fn disk(mut self, image: impl Into<PathBuf>) -> Self {
        self.disk = Some(image.into());
        self
    }

    /// An extra read-only raw virtio disk, to hand data to the guest. The guest finds the
    /// N-th one added (from 1) as [`data_disk_device`]`(N)`: the kernel's `vdX` names follow
    /// the order the drivers probe, which is not always the order on the command line (seen:
    /// the main disk as `/dev/vdb` after basalt-init loaded virtio_blk beside other modules).
    pub fn data_disk(mut self, image: impl Into<PathBuf>) -> Self {
        self.data_disks.push(image.into());
        self
    }

    /// `-no-reboot`: a guest reboot ends QEMU instead of restarting the firmware.
    pub fn no_reboot(mut self, no_reboot: bool) -> Self {
        self.no_reboot = no_reboot;
        self
    }

    /// Copy the console to stderr as it arrives (default: `BASALT_VM_ECHO=1`).
    pub fn echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// An extra QEMU argument, appended last.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// The work folder (logs, OVMF variable store).
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// The boot method.
    pub fn boot(&self) -> &Boot {
        &self.boot
    }

    /// QEMU's arguments (without the program), in order.
    pub fn qemu_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&dyn AsRef<OsStr>]| {
            args.extend(items.iter().map(|i| i.as_ref().to_os_string()));
        };
        let machine = if self.secure_boot {
            "q35,smm=on"
        } else {
            "q35"
        };
        push(&[&"-accel", &"tcg", &"-machine", &machine, &"-nodefaults"]);
        if self.secure_boot {
            push(&[&"-global", &"driver=cfi.pflash01,property=secure,value=on"]);
        }
        push(&[&"-display", &"none", &"-nic", &"none", &"-serial", &"stdio"]);
        push(&[&"-m", &self.memory_mib.to_string()]);
        push(&[&"-smp", &self.cpus.to_string(), &"-cpu", &self.cpu_model]);
        match &self.boot {
            Boot::Uefi { vars } => {
                let file = if self.secure_boot {
                    OVMF_CODE_SECURE
                } else {
                    OVMF_CODE
                };
                let code = format!("if=pflash,format=raw,unit=0,readonly=on,file={file}");
                push(&[&"-drive", &code, &"-drive"]);
                push(&[&drive_spec("if=pflash,format=raw,unit=1", vars)]);
            }
            Boot::Direct {
                kernel,
                initrd,
                append,
            } => {
                push(&[&"-kernel", kernel, &"-append", append]);
                if let Some(initrd) = initrd {
                    push(&[&"-initrd", initrd]);
                }
            }
        }
        // Each disk is a drive plus its virtio-blk device, in command-line order, so PCI
        // enumerates the main disk first (QEMU creates `if=virtio` drives after every
        // `-device`: mixing the two put a data disk first). A data disk's device carries
        // its serial (QEMU 10 no longer takes `serial=` on `-drive`).
        if let Some(disk) = &self.disk {
            let spec = drive_spec("if=none,id=main,format=raw", disk);
            push(&[&"-drive", &spec, &"-device", &"virtio-blk-pci,drive=main"]);
        }
        for (i, data) in self.data_disks.iter().enumerate() {
            let id = format!("{DATA_DISK_SERIAL}{}", i + 1);
            let spec = drive_spec(&format!("if=none,id={id},format=raw,readonly=on"), data);
            let device = format!("virtio-blk-pci,drive={id},serial={id}");
            push(&[&"-drive", &spec, &"-device", &device]);
        }
        if self.no_reboot {
            push(&[&"-no-reboot"]);
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// Starts QEMU. Checks the inputs exist first, so a typo is not a 60 s timeout.
    pub fn spawn(&self) -> Result<Vm> {
        self.check_inputs()?;
        fs::create_dir_all(&self.work_dir).map_err(|source| Error::CreateDir {
            path: self.work_dir.clone(),
            source,
        })?;
        if let Boot::Uefi { vars } = &self.boot {
            if !vars.exists() {
                let template = if self.secure_boot && !self.setup_mode {
                    OVMF_VARS_SECURE_TEMPLATE
                } else {
                    OVMF_VARS_TEMPLATE
                };
                fs::copy(template, vars).map_err(|source| Error::CopyFile {
                    from: template.into(),
                    to: vars.clone(),
                    source,
                })?;
            }
        }
        let (run, serial) = new_serial_log(&self.work_dir)?;
        let qemu_log = self.work_dir.join(format!("qemu-{run}.log"));
        let serial_log = self.work_dir.join(format!("serial-{run}.log"));
        let program = QEMU.locate()?;
        let args = self.qemu_args();
        let command_line = std::iter::once(program.as_os_str())
            .chain(args.iter().map(OsString::as_os_str))
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let mut stderr = File::create(&qemu_log).map_err(|source| Error::WriteFile {
            path: qemu_log.clone(),
            source,
        })?;
        writeln!(stderr, "# {command_line}").map_err(|source| Error::WriteFile {
            path: qemu_log.clone(),
            source,
        })?;
        let mut command = std::process::Command::new(&program);
        // stdin is the guest's serial input ([`Vm::send`], [`Vm::shell`]).
        command
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        // If the test process dies without running `Drop` (SIGKILL, a harness timeout), QEMU
        // must not keep burning a shared CPU: the kernel kills it when the thread that spawned
        // it ends. So a `Vm` must not outlive the thread that called `spawn`.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let mut child = command.spawn().map_err(|source| Error::QemuSpawn {
            command: command_line,
            source,
        })?;
        let started = Instant::now();
        let pid = child.id();
        let input = child.stdin.take();
        let console = Arc::new(Console::default());
        let pump = child.stdout.take().map(|stdout| {
            let console = console.clone();
            let echo = self.echo;
            std::thread::spawn(move || pump(stdout, serial, &console, echo))
        });
        Ok(Vm {
            child,
            pid,
            input,
            shell_commands: 0,
            console,
            pump,
            serial_log,
            qemu_log,
            cursor: 0,
            match_start: 0,
            started,
            status: None,
        })
    }

    fn check_inputs(&self) -> Result<()> {
        let missing = |what: &str, path: &Path| Error::VmConfig {
            problem: format!("{what} {} does not exist", path.display()),
        };
        match &self.boot {
            Boot::Uefi { .. } => {
                for firmware in [OVMF_CODE, OVMF_VARS_TEMPLATE] {
                    if !Path::new(firmware).is_file() {
                        return Err(ToolError::Missing {
                            tool: firmware,
                            package: "ovmf",
                        }
                        .into());
                    }
                }
                if self.disk.is_none() && self.data_disks.is_empty() {
                    return Err(Error::VmConfig {
                        problem: "a UEFI guest needs a disk to boot from".into(),
                    });
                }
            }
            Boot::Direct { kernel, initrd, .. } => {
                if !kernel.is_file() {
                    return Err(missing("kernel", kernel));
                }
                if let Some(initrd) = initrd.as_ref().filter(|i| !i.is_file()) {
                    return Err(missing("initrd", initrd));
                }
            }
        }
        for disk in self.disk.iter().chain(&self.data_disks) {
            if !disk.is_file() {
                return Err(missing("disk image", disk));
            }
        }
        if self.cpus == 0 || self.memory_mib < 64 {
            return Err(Error::VmConfig {
                problem: format!("{} vCPUs, {} MiB", self.cpus, self.memory_mib),
            });
        }
        Ok(())
    }
}

/// `-drive` value: QEMU separates options with commas, so a comma in a path is doubled.
/// The virtio serial of data disk N is `data-N` (udev's `/dev/disk/by-id/virtio-<serial>`).
const DATA_DISK_SERIAL: &str = "data-";

/// The guest's path of the `n`-th data disk (from 1) added with [`VmConfig::data_disk`]:
/// the link udev makes from its virtio serial, stable whatever order the disks were probed
/// in (a guest without udev has only the `vdX` names).
pub fn data_disk_device(n: usize) -> String {
    format!("/dev/disk/by-id/virtio-{DATA_DISK_SERIAL}{n}")
}

fn drive_spec(options: &str, file: &Path) -> OsString {
    let mut spec = OsString::from(options);
    spec.push(",file=");
    spec.push(file.to_string_lossy().replace(',', ",,"));
    spec
}

/// Creates the first free `serial-N.log` in `dir` (N from 1).
fn new_serial_log(dir: &Path) -> Result<(u32, File)> {
    for run in 1..=MAX_RUNS {
        let path = dir.join(format!("serial-{run}.log"));
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((run, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(Error::WriteFile { path, source }),
        }
    }
    Err(Error::VmConfig {
        problem: format!("{} already holds {MAX_RUNS} serial logs", dir.display()),
    })
}

/// What [`Vm::shell`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellOutput {
    /// The command's exit status (`$?`).
    pub status: i32,
    /// Its output (stdout and stderr, as the console showed it).
    pub output: String,
}

/// How a guest ended, as told by QEMU's exit and the kernel's last console message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    /// The kernel powered off (`reboot: Power down`).
    PowerOff,
    /// The kernel restarted and `-no-reboot` ended QEMU (`reboot: Restarting system`).
    Reboot,
    /// QEMU exited cleanly but the console says neither (firmware reset, triple fault…).
    Other,
}

#[derive(Debug, Default)]
struct Console {
    state: Mutex<ConsoleState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct ConsoleState {
    bytes: Vec<u8>,
    /// The same console without the kernel's lines (userspace markers and shell output).
    user: UserView,
    /// QEMU closed its stdout (it exited).
    closed: bool,
}

impl Console {
    fn lock(&self) -> MutexGuard<'_, ConsoleState> {
        // A panicking pump thread cannot leave the byte buffer inconsistent: keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Copies QEMU's stdout into the log file, the shared buffer and (optionally) stderr, until
/// QEMU closes it.
fn pump(mut from: ChildStdout, mut log: File, console: &Console, echo: bool) {
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // The log is for humans after the fact; a failed write must not stop the test
                // from seeing the console, so it is ignored here.
                let _ = log.write_all(&buf[..n]);
                if echo {
                    let _ = std::io::stderr().write_all(&buf[..n]);
                }
                {
                    let mut state = console.lock();
                    state.bytes.extend_from_slice(&buf[..n]);
                    state.user.push(&buf[..n]);
                }
                console.changed.notify_all();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = log.flush();
    console.lock().closed = true;
    console.changed.notify_all();
}

/// A running (or finished) guest. Dropping it kills QEMU by pid if it still runs; QEMU also
/// dies with the thread that spawned it, so keep a `Vm` on that thread.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    pid: u32,
    /// QEMU's stdin: the serial console's input.
    input: Option<ChildStdin>,
    /// Commands run through [`Vm::shell`] (numbers their markers).
    shell_commands: u32,
    console: Arc<Console>,
    pump: Option<JoinHandle<()>>,
    serial_log: PathBuf,
    qemu_log: PathBuf,
    cursor: usize,
    /// Where the last marker matched by [`Vm::wait_any`] began (raw console offset).
    match_start: usize,
    started: Instant,
    status: Option<ExitStatus>,
}

impl Vm {
    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The serial console log file of this run.
    pub fn serial_log(&self) -> &Path {
        &self.serial_log
    }

    /// QEMU's stderr log file of this run (its first line is the command line).
    pub fn qemu_log(&self) -> &Path {
        &self.qemu_log
    }

    /// Time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The whole console so far (lossy UTF-8, raw: firmware escape sequences included).
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.console.lock().bytes).into_owned()
    }

    /// Bytes of console so far (a position for [`Vm::console_bytes_from`]).
    pub fn console_len(&self) -> usize {
        self.console.lock().bytes.len()
    }

    /// The raw console bytes from position `from` (see [`Vm::console_len`]) to now.
    pub fn console_bytes_from(&self, from: usize) -> Vec<u8> {
        let state = self.console.lock();
        state.bytes[from.min(state.bytes.len())..].to_vec()
    }

    /// The console after the cursor (what the next [`Vm::expect`] searches).
    pub fn console_after_cursor(&self) -> String {
        let state = self.console.lock();
        String::from_utf8_lossy(state.bytes.get(self.cursor..).unwrap_or_default()).into_owned()
    }

    /// The console line after the cursor, once its end has arrived (a marker can arrive before
    /// the rest of its line); after `timeout` whatever is there.
    pub fn line_after_cursor(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + scale(timeout);
        let mut rest = self.console_after_cursor();
        while !rest.contains('\n') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            rest = self.console_after_cursor();
        }
        rest.lines().next().unwrap_or_default().to_owned()
    }

    /// Waits until `marker` appears after the cursor; moves the cursor past it and returns the
    /// time since QEMU started. On timeout QEMU is killed.
    pub fn expect(&mut self, marker: &str, timeout: Duration) -> Result<Duration> {
        self.expect_any(&[marker], timeout)?;
        Ok(self.elapsed())
    }

    /// Waits until one of `markers` appears after the cursor and returns its index; the one
    /// that appears first on the console wins (ties: the earlier in `markers`). Moves the
    /// cursor past the match. On timeout QEMU is killed; if QEMU exits first, that is an error.
    pub fn expect_any(&mut self, markers: &[&str], timeout: Duration) -> Result<usize> {
        let timeout = scale(timeout);
        match self.wait_any(markers, Instant::now() + timeout)? {
            Some(index) => Ok(index),
            None => {
                self.kill()?;
                Err(Error::MarkerTimeout {
                    markers: owned(markers),
                    timeout,
                    elapsed: self.elapsed(),
                    console: Box::new(self.excerpt()),
                })
            }
        }
    }

    /// [`Vm::expect_any`] without the kill: `None` when `deadline` passes (the guest keeps
    /// running); an error only when QEMU exits first.
    pub fn wait_any(&mut self, markers: &[&str], deadline: Instant) -> Result<Option<usize>> {
        let console = self.console.clone();
        let mut state = console.lock();
        loop {
            if let Some(found) = find_marker(&state, self.cursor, markers) {
                self.cursor = found.end;
                self.match_start = found.start;
                return Ok(Some(found.index));
            }
            if state.closed {
                drop(state);
                let status = match self.reap(REAP_TIMEOUT) {
                    Ok(status) => describe(status),
                    Err(_) => {
                        self.kill()?;
                        "closed its console without exiting; killed".to_string()
                    }
                };
                return Err(Error::ExitedBeforeMarker {
                    markers: owned(markers),
                    status,
                    console: Box::new(self.excerpt()),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            state = console
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Types `text` on the guest's serial console (QEMU's stdin), as is: add `\n` to end a
    /// line.
    pub fn send(&mut self, text: &str) -> Result<()> {
        let serial_log = self.serial_log.clone();
        let input = self.input.as_mut().ok_or_else(|| Error::VmConfig {
            problem: "the serial input of this guest is closed".into(),
        })?;
        input
            .write_all(text.as_bytes())
            .and_then(|()| input.flush())
            .map_err(|source| Error::WriteFile {
                path: serial_log,
                source,
            })
    }

    /// Waits until a root shell answers on the serial console (a test image logs root in
    /// on ttyS0: `basalt_image::build::variant`): types a probe every few seconds (the getty
    /// discards what was typed before it started) until its computed answer comes back.
    pub fn wait_for_shell(&mut self, timeout: Duration) -> Result<()> {
        let timeout = scale(timeout);
        let deadline = Instant::now() + timeout;
        let mut probe = 0u32;
        while Instant::now() < deadline {
            probe += 1;
            // The shell prints 6*7+probe; the echo of the typed line shows the formula.
            self.send(&format!("echo BASALT-SH-READY-$((6*7+{probe}))\n"))?;
            let answer = format!("BASALT-SH-READY-{}", 42 + probe);
            let step = (Instant::now() + Duration::from_secs(3)).min(deadline);
            if self.wait_any(&[&answer], step)?.is_some() {
                return Ok(());
            }
        }
        self.kill()?;
        Err(Error::MarkerTimeout {
            markers: vec!["a root shell on the serial console (BASALT-SH-READY-…)".into()],
            timeout,
            elapsed: self.elapsed(),
            console: Box::new(self.excerpt()),
        })
    }

    /// Runs `command` (one line of `sh`, no newline; run in a subshell, so `cd` or `exit`
    /// stay inside) in the root shell of the serial console and returns its exit status and
    /// output (stdout and stderr, `\r` removed). Call [`Vm::wait_for_shell`] first. Kernel
    /// messages printed meanwhile are left out of the output (and cannot break its markers):
    /// see [`crate::kernel_lines`] — so are output lines that look like them (`dmesg`). On
    /// timeout QEMU is killed.
    pub fn shell(&mut self, command: &str, timeout: Duration) -> Result<ShellOutput> {
        if command.contains('\n') || command.len() > 3000 {
            return Err(Error::VmConfig {
                problem: format!(
                    "a shell command must be one line of at most 3000 bytes: {command:?}"
                ),
            });
        }
        self.shell_commands += 1;
        let n = self.shell_commands;
        // The typed line has `$((n+0))`; only the shell's output has the number itself.
        self.send(&format!(
            "echo BASALT-SH-$(({n}+0))-BEGIN; ( {command} ); echo BASALT-SH-$(({n}+0))-END rc=$?\n"
        ))?;
        let begin = format!("BASALT-SH-{n}-BEGIN");
        let end = format!("BASALT-SH-{n}-END rc=");
        self.expect(&begin, timeout)?;
        let from = self.cursor;
        self.expect(&end, timeout)?;
        let (to, status_from) = (self.match_start, self.cursor);
        self.expect("\n", timeout)?;
        // Output and status come from the console without kernel lines: a kernel message
        // printed while the command ran is not part of what it wrote.
        let (output, status) = {
            let state = self.console.lock();
            let output = String::from_utf8_lossy(state.user.between(from, to)).replace('\r', "");
            let tail = String::from_utf8_lossy(state.user.between(status_from, self.cursor))
                .trim()
                .to_owned();
            (output, tail)
        };
        let status = status.parse::<i32>().map_err(|_| Error::VmConfig {
            problem: format!("shell command {command:?}: unreadable exit status {status:?}"),
        })?;
        let output = output.strip_prefix('\n').unwrap_or(&output).to_owned();
        Ok(ShellOutput { status, output })
    }

    /// Waits for QEMU to exit by itself and tells how the guest ended. A non-zero QEMU exit is
    /// [`Error::QemuFailed`]; no exit within `timeout` kills QEMU and is
    /// [`Error::ExitTimeout`].
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<GuestExit> {
        let timeout = scale(timeout);
        let status = match self.reap(timeout) {
            Ok(status) => status,
            Err(Error::ExitTimeout { .. }) => {
                self.kill()?;
                return Err(Error::ExitTimeout {
                    timeout,
                    console: Box::new(self.excerpt()),
                });
            }
            Err(e) => return Err(e),
        };
        if !status.success() {
            return Err(Error::QemuFailed {
                status: describe(status),
                console: Box::new(self.excerpt()),
            });
        }
        let state = self.console.lock();
        let last = |marker: &str| rfind(&state.bytes, marker.as_bytes());
        Ok(match (last(POWER_DOWN_MARKER), last(RESTART_MARKER)) {
            (Some(off), Some(restart)) if off > restart => GuestExit::PowerOff,
            (Some(_), None) => GuestExit::PowerOff,
            (_, Some(_)) => GuestExit::Reboot,
            (None, None) => GuestExit::Other,
        })
    }

    /// [`Vm::wait_exit`], and an error unless the guest powered off.
    pub fn expect_poweroff(&mut self, timeout: Duration) -> Result<()> {
        self.expect_exit(GuestExit::PowerOff, "power off", timeout)
    }

    /// [`Vm::wait_exit`], and an error unless the guest rebooted (needs
    /// [`VmConfig::no_reboot`]).
    pub fn expect_reboot_exit(&mut self, timeout: Duration) -> Result<()> {
        self.expect_exit(GuestExit::Reboot, "reboot", timeout)
    }

    fn expect_exit(
        &mut self,
        wanted: GuestExit,
        expected: &'static str,
        timeout: Duration,
    ) -> Result<()> {
        let actual = self.wait_exit(timeout)?;
        if actual == wanted {
            Ok(())
        } else {
            Err(Error::UnexpectedGuestExit {
                expected,
                actual,
                console: Box::new(self.excerpt()),
            })
        }
    }

    /// Kills QEMU (SIGKILL to its pid) if it still runs, reaps it and finishes the log.
    pub fn kill(&mut self) -> Result<()> {
        self.input = None;
        if self.status.is_none() {
            match self.child.try_wait() {
                Ok(Some(status)) => self.status = Some(status),
                _ => {
                    // `Child::kill` signals exactly this pid; never a process name.
                    self.child.kill().map_err(|source| Error::QemuKill {
                        pid: self.pid,
                        source,
                    })?;
                    let status = self.child.wait().map_err(|source| Error::QemuWait {
                        pid: self.pid,
                        source,
                    })?;
                    self.status = Some(status);
                }
            }
        }
        self.join_pump();
        Ok(())
    }

    /// The end of the console and of QEMU's stderr, for an error message.
    pub fn excerpt(&self) -> ConsoleExcerpt {
        let tail = {
            let state = self.console.lock();
            last_lines(&clean_console(&state.bytes), TAIL_LINES)
        };
        let qemu_stderr = fs::read(&self.qemu_log)
            .map(|b| last_lines(&String::from_utf8_lossy(&b), QEMU_TAIL_LINES))
            .unwrap_or_default();
        ConsoleExcerpt {
            serial_log: self.serial_log.clone(),
            tail,
            qemu_log: self.qemu_log.clone(),
            qemu_stderr,
        }
    }

    /// Waits up to `timeout` for QEMU to exit on its own (polling: `Child` has no timed wait),
    /// then drains the console. [`Error::ExitTimeout`] (without console) if it did not.
    fn reap(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let polled = self.child.try_wait().map_err(|source| Error::QemuWait {
                pid: self.pid,
                source,
            })?;
            if let Some(status) = polled {
                self.status = Some(status);
                self.join_pump();
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(Error::ExitTimeout {
                    timeout,
                    console: Box::new(ConsoleExcerpt {
                        serial_log: self.serial_log.clone(),
                        tail: String::new(),
                        qemu_log: self.qemu_log.clone(),
                        qemu_stderr: String::new(),
                    }),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    fn join_pump(&mut self) {
        if let Some(pump) = self.pump.take() {
            // QEMU is gone, so its stdout is closed and the pump ends; a panic in it only
            // loses console bytes, which the caller's assertions will show.
            let _ = pump.join();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// `timeout` times `BASALT_VM_TIMEOUT_FACTOR` (default 1): every bounded wait of a scenario
/// goes through it.
pub fn scale(timeout: Duration) -> Duration {
    let factor = std::env::var(TIMEOUT_FACTOR_ENV)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|f| f.is_finite() && *f > 0.0)
        .unwrap_or(1.0);
    timeout.mul_f64(factor)
}

fn owned(markers: &[&str]) -> Vec<String> {
    markers.iter().map(|m| m.to_string()).collect()
}

fn describe(status: ExitStatus) -> String {
    status.to_string()
}

/// The earliest match of any marker in `bytes[from..]`: (marker index, end offset).
/// A marker found on the console: which one, and its raw byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Found {
    index: usize,
    start: usize,
    end: usize,
}

/// The first of `markers` at or after raw offset `from`, searched in the raw console (kernel
/// messages such as `reboot: Restarting system`) and in the console without kernel lines
/// (userspace text a kernel line was printed into: see [`crate::kernel_lines`]); the earlier
/// start wins, ties go to the earlier marker.
fn find_marker(state: &ConsoleState, from: usize, markers: &[&str]) -> Option<Found> {
    let raw = first_match(&state.bytes, from, markers).map(|(index, end)| Found {
        index,
        start: end - markers[index].len(),
        end,
    });
    let view = &state.user;
    let view_from = view.index_of_raw(from);
    let user = first_match(view.bytes(), view_from, markers).map(|(index, end)| Found {
        index,
        start: view.raw_of(end - markers[index].len()),
        end: view.raw_of(end - 1) + 1,
    });
    match (raw, user) {
        (Some(a), Some(b)) => Some(if (b.start, b.index) < (a.start, a.index) {
            b
        } else {
            a
        }),
        (a, b) => a.or(b),
    }
}

fn first_match(bytes: &[u8], from: usize, markers: &[&str]) -> Option<(usize, usize)> {
    let hay = bytes.get(from..)?;
    markers
        .iter()
        .enumerate()
        .filter(|(_, m)| !m.is_empty())
        .filter_map(|(i, m)| find(hay, m.as_bytes()).map(|pos| (pos, i, m.len())))
        .min_by_key(|&(pos, i, _)| (pos, i))
        .map(|(pos, i, len)| (i, from + pos + len))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// Console bytes as readable text: drops carriage returns, ANSI/VT escape sequences (firmware
/// and systemd-boot paint with them) and other control characters.
pub fn clean_console(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ params final-byte(@..~); other escapes: ESC + one char.
                if chars.next_if_eq(&'[').is_some() {
                    for p in chars.by_ref() {
                        if ('@'..='~').contains(&p) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_of(config: &VmConfig) -> Vec<String> {
        config
            .qemu_args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn always_tcg_never_kvm_and_no_network() {
        let config = VmConfig::uefi("/w").disk("/d.img");
        let args = args_of(&config);
        let joined = args.join(" ");
        assert!(joined.contains("-accel tcg"), "{joined}");
        assert!(!joined.contains("kvm"), "{joined}");
        assert!(joined.contains("-nic none"), "{joined}");
        assert!(joined.contains("-machine q35"), "{joined}");
    }

    #[test]
    fn uefi_uses_readonly_code_and_private_vars() {
        let args = args_of(&VmConfig::uefi("/w").disk("/d.img"));
        assert!(args.contains(&format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
        )));
        assert!(args.contains(&"if=pflash,format=raw,unit=1,file=/w/OVMF_VARS.fd".to_string()));
    }

    #[test]
    fn disks_main_first_then_readonly_data() {
        let config = VmConfig::direct("/w", "/k", None, "console=ttyS0")
            .data_disk("/a,b.img")
            .disk("/main.img")
            .no_reboot(true);
        let args = args_of(&config);
        let drives: Vec<&String> = args
            .iter()
            .filter(|a| a.starts_with("if=") || a.starts_with("virtio-blk"))
            .collect();
        assert_eq!(
            drives,
            [
                "if=none,id=main,format=raw,file=/main.img",
                "virtio-blk-pci,drive=main",
                "if=none,id=data-1,format=raw,readonly=on,file=/a,,b.img",
                "virtio-blk-pci,drive=data-1,serial=data-1"
            ]
        );
        assert!(args.contains(&"-no-reboot".to_string()));
        assert!(!args.contains(&"-initrd".to_string()));
    }

    #[test]
    fn first_match_prefers_the_earliest_on_the_console() {
        let console = b"xx REBOOT yy SUCCESS zz REBOOT";
        assert_eq!(
            first_match(console, 0, &["SUCCESS", "REBOOT"]),
            Some((1, 9))
        );
        assert_eq!(
            first_match(console, 9, &["SUCCESS", "REBOOT"]),
            Some((0, 20))
        );
        assert_eq!(first_match(console, 30, &["REBOOT"]), None);
        assert_eq!(first_match(console, 99, &["REBOOT"]), None);
        assert_eq!(first_match(console, 0, &[""]), None);
    }

    fn state(raw: &[u8]) -> ConsoleState {
        let mut state = ConsoleState::default();
        state.bytes.extend_from_slice(raw);
        state.user.push(raw);
        state
    }

    #[test]
    fn a_marker_split_by_a_kernel_line_is_found_and_mapped_to_raw_offsets() {
        // As seen in CI: a kernel line printed into the middle of a shell marker.
        let raw = b"echo x\r\nBASALT-SH-2[   48.103720] ata6: SATA link down\r\n5-BEGIN\r\nout\r\n";
        let st = state(raw);
        let found = find_marker(&st, 0, &["BASALT-SH-25-BEGIN"]).unwrap();
        assert_eq!(found.index, 0);
        assert_eq!(&raw[found.start..found.start + 10], b"BASALT-SH-");
        assert_eq!(&raw[found.end..found.end + 2], b"\r\n");
        assert_eq!(st.user.between(found.end, raw.len()), b"\r\nout\r\n");
        // Kernel markers are still found in the raw console, at their place.
        let kernel = find_marker(&st, 0, &["ata6: SATA link"]).unwrap();
        assert!(kernel.start > found.start && kernel.end < found.end);
        // The earlier start wins: the split marker began before the kernel line.
        let both = find_marker(&st, 0, &["ata6: SATA link", "BASALT-SH-25-BEGIN"]).unwrap();
        assert_eq!(both.index, 1);
        // Past the cursor nothing is found again.
        assert_eq!(find_marker(&st, found.end, &["BASALT-SH-25-BEGIN"]), None);
    }

    #[test]
    fn markers_match_mid_line_and_across_escapes_removed_only_in_excerpts() {
        let raw = b"\x1b[0m\x1b[37m\rBoot\x1b[2J ok\r\nlogin: ";
        assert_eq!(clean_console(raw), "Boot ok\nlogin: ");
        assert!(first_match(raw, 0, &["login:"]).is_some());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// `first_match` agrees with a naive search for the earliest marker after the cursor.
        #[test]
        fn first_match_is_the_earliest_occurrence(
            console in "[ab\\n]{0,40}",
            markers in proptest::collection::vec("[ab]{1,3}", 1..4),
            from in 0usize..45,
        ) {
            let refs: Vec<&str> = markers.iter().map(String::as_str).collect();
            let got = first_match(console.as_bytes(), from, &refs);
            let naive = (from..console.len()).find_map(|pos| {
                refs.iter().position(|m| console.as_bytes()[pos..].starts_with(m.as_bytes()))
                    .map(|i| (i, pos + refs[i].len()))
            });
            proptest::prop_assert_eq!(got, naive);
        }

        #[test]
        fn clean_console_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = clean_console(&bytes);
        }
    }

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
    }

    #[test]
    fn missing_kernel_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = VmConfig::direct(dir.path(), dir.path().join("nope"), None, "");
        let err = config.spawn().unwrap_err();
        assert!(matches!(err, Error::VmConfig { .. }), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn serial_logs_are_numbered_per_run() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(new_serial_log(dir.path()).unwrap().0, 1);
        assert_eq!(new_serial_log(dir.path()).unwrap().0, 2);
    }
}
