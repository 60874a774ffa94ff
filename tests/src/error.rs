//! The one error type of `basalt-tests`: each variant names the operation that failed and
//! carries the path, package, tool or console excerpt involved.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system tool is not installed.
    #[error("`{tool}` not found: apt-get install {package}")]
    ToolMissing {
        /// Program name.
        tool: &'static str,
        /// Debian package providing it.
        package: &'static str,
    },
    /// A system tool could not be started.
    #[error("starting `{tool}`")]
    ToolSpawn {
        /// Program name.
        tool: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A system tool exited non-zero.
    #[error("`{tool} {args}` failed ({status}): {stderr}")]
    ToolFailed {
        /// Program name.
        tool: &'static str,
        /// Its arguments, space-joined.
        args: String,
        /// How it exited.
        status: ExitStatus,
        /// The end of its stderr.
        stderr: String,
    },

    /// `apt-cache depends linux-image-amd64` named no kernel image package.
    #[error(
        "`apt-cache depends {meta}` named no linux-image package (run `apt-get update`?): {output}"
    )]
    KernelPackageUnknown {
        /// The meta package asked about.
        meta: &'static str,
        /// What apt-cache printed.
        output: String,
    },
    /// `apt-get download` of the kernel package failed.
    #[error("downloading Debian package {package} into {dir} (package lists stale? run `apt-get update`)")]
    KernelDownload {
        /// The package.
        package: String,
        /// Where it was downloaded to.
        dir: PathBuf,
        /// The apt-get failure.
        source: Box<Error>,
    },
    /// The extracted kernel package does not have the expected shape.
    #[error("kernel package {package} extracted in {dir}: {problem}")]
    KernelTreeInvalid {
        /// The package.
        package: String,
        /// The extraction folder.
        dir: PathBuf,
        /// What is missing or unexpected.
        problem: String,
    },
    /// The compressed kernel holds no xz stream to extract `vmlinux` from.
    #[error("no xz stream (FD 37 7A 58 5A 00) in {vmlinuz}")]
    VmlinuxNoXzStream {
        /// The bzImage searched.
        vmlinuz: PathBuf,
    },
    /// The extracted `vmlinux` lacks the PVH entry note QEMU needs to boot it directly.
    #[error("{vmlinux} has no PVH entry note (Xen note type 18): QEMU cannot boot it directly")]
    VmlinuxNoPvhEntry {
        /// The extracted kernel.
        vmlinux: PathBuf,
    },
    /// A file that must be ELF64 (little-endian) is not.
    #[error("{path} is not a little-endian ELF64 file: {reason}")]
    NotElf64 {
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A module asked for is not in `modules.dep`.
    #[error("kernel module {name} is not listed in {modules_dep}")]
    ModuleNotFound {
        /// The module name asked for.
        name: String,
        /// The `modules.dep` searched.
        modules_dep: PathBuf,
    },
    /// The busybox binary for an initramfs is dynamically linked.
    #[error("{path} is dynamically linked; an initramfs needs the static one: apt-get install busybox-static")]
    BusyboxNotStatic {
        /// The binary.
        path: PathBuf,
    },
    /// A fixture was given a path it cannot place (absolute, `..`, empty).
    #[error("fixture path {path:?} must be relative, without `..`")]
    FixturePath {
        /// The offending path.
        path: String,
    },

    /// Taking the cache lock failed.
    #[error("locking {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Creating a folder failed.
    #[error("creating folder {path}")]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading a file or folder failed.
    #[error("reading {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing a file failed.
    #[error("writing {path}")]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Copying a file failed.
    #[error("copying {from} to {to}")]
    CopyFile {
        /// Source.
        from: PathBuf,
        /// Destination.
        to: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Renaming (publishing) a file or folder failed.
    #[error("renaming {from} to {to}")]
    Rename {
        /// Source.
        from: PathBuf,
        /// Destination.
        to: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Removing a stale file or folder failed.
    #[error("removing {path}")]
    Remove {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// A VM was configured inconsistently.
    #[error("VM configuration: {problem}")]
    VmConfig {
        /// What is wrong.
        problem: String,
    },
    /// QEMU could not be started.
    #[error("starting QEMU ({command})")]
    QemuSpawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Waiting on the QEMU process failed.
    #[error("waiting for QEMU (pid {pid})")]
    QemuWait {
        /// QEMU's pid.
        pid: u32,
        /// The OS error.
        source: std::io::Error,
    },
    /// Killing the QEMU process failed.
    #[error("killing QEMU (pid {pid})")]
    QemuKill {
        /// QEMU's pid.
        pid: u32,
        /// The OS error.
        source: std::io::Error,
    },
    /// No expected console marker appeared in time; QEMU was killed.
    #[error("none of {markers:?} on the console within {timeout:?} ({elapsed:?} after QEMU start); QEMU killed\n{console}")]
    MarkerTimeout {
        /// The markers waited for.
        markers: Vec<String>,
        /// The timeout of this step.
        timeout: Duration,
        /// Time since QEMU started.
        elapsed: Duration,
        /// Where the console was and what it said last.
        console: Box<ConsoleExcerpt>,
    },
    /// QEMU exited while a console marker was awaited.
    #[error("QEMU exited ({status}) before any of {markers:?} appeared on the console\n{console}")]
    ExitedBeforeMarker {
        /// The markers waited for.
        markers: Vec<String>,
        /// QEMU's exit status.
        status: String,
        /// Where the console was and what it said last.
        console: Box<ConsoleExcerpt>,
    },
    /// QEMU did not exit in time; it was killed.
    #[error("QEMU did not exit within {timeout:?}; killed\n{console}")]
    ExitTimeout {
        /// The timeout of this step.
        timeout: Duration,
        /// Where the console was and what it said last.
        console: Box<ConsoleExcerpt>,
    },
    /// QEMU itself failed (non-zero exit: bad arguments, missing file, crash).
    #[error("QEMU failed ({status})\n{console}")]
    QemuFailed {
        /// QEMU's exit status.
        status: String,
        /// Where the console was and what it said last.
        console: Box<ConsoleExcerpt>,
    },
    /// The guest ended in another way than the scenario expected.
    #[error("expected the guest to {expected}, but it ended with {actual:?}\n{console}")]
    UnexpectedGuestExit {
        /// What the scenario expected (`power off`, `reboot`).
        expected: &'static str,
        /// How it ended.
        actual: crate::vm::GuestExit,
        /// Where the console was and what it said last.
        console: Box<ConsoleExcerpt>,
    },
}

/// The end of a serial console log, with the log's path and QEMU's own stderr, for errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleExcerpt {
    /// The serial log file.
    pub serial_log: PathBuf,
    /// The last lines of the serial console.
    pub tail: String,
    /// QEMU's stderr log file.
    pub qemu_log: PathBuf,
    /// The last lines of QEMU's stderr (often empty).
    pub qemu_stderr: String,
}

impl std::fmt::Display for ConsoleExcerpt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "--- end of serial console {} ---",
            self.serial_log.display()
        )?;
        writeln!(f, "{}", self.tail)?;
        writeln!(f, "--- (end of serial console) ---")?;
        if !self.qemu_stderr.is_empty() {
            writeln!(f, "--- QEMU stderr {} ---", self.qemu_log.display())?;
            writeln!(f, "{}", self.qemu_stderr)?;
        }
        Ok(())
    }
}
