//! The one error type of `basalt-tests`: each variant names the operation that failed and
//! carries the path, package, tool or console excerpt involved.

use std::path::PathBuf;
use std::time::Duration;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command in a guest's root shell exited non-zero.
    #[error("guest command `{command}` exited {status}:\n{output}")]
    GuestCommand {
        /// The shell line.
        command: String,
        /// Its exit status.
        status: i32,
        /// What it printed.
        output: String,
    },
    /// A guest command's JSON output could not be read.
    #[error("guest command `{command}`: {problem}\n{output}")]
    GuestJson {
        /// The shell line.
        command: String,
        /// What is wrong with the output.
        problem: String,
        /// What it printed.
        output: String,
    },
    /// A system tool is missing or failed.
    #[error(transparent)]
    Tool(#[from] basalt_image::tool::ToolError),
    /// Fetching or reading the Debian kernel failed (also ELF checks).
    #[error(transparent)]
    Kernel(#[from] basalt_image::kernel::KernelError),
    /// Building an image failed.
    #[error("image build: {0}")]
    Build(#[from] basalt_image::build::BuildError),
    /// Making test keys or a trust root failed.
    #[error("test keys: {0}")]
    Manifest(basalt_manifest::Error),
    /// Reading or editing a disk image's layout or ESP failed.
    #[error("disk image {path}: {source}")]
    Disk {
        /// The disk image.
        path: PathBuf,
        /// What the disk library said.
        #[source]
        source: basalt_disk::Error,
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

    /// A scenario's expectation about a guest or its disk did not hold (the message says
    /// which, with the console excerpt that matters).
    #[error("{0}")]
    ScenarioCheck(String),
    /// Reading or writing a slot of a disk image (GPT, slot contents) failed.
    #[error("{what} (slot {slot} of {disk})")]
    Slot {
        /// The operation.
        what: &'static str,
        /// The slot.
        slot: basalt_disk::Slot,
        /// The disk image.
        disk: PathBuf,
        /// What basalt-disk said.
        source: basalt_disk::Error,
    },
    /// Reading or changing the boot entries on a disk image's ESP failed.
    #[error("{what} (ESP of {disk})")]
    BootEntries {
        /// The operation.
        what: &'static str,
        /// The disk image.
        disk: PathBuf,
        /// What basalt-disk said.
        source: basalt_disk::Error,
    },
    /// Formatting a dm-verity hash tree failed.
    #[error("formatting the verity hash tree of {path}")]
    VerityFormat {
        /// The image (data and tree).
        path: PathBuf,
        /// What basalt-verity said.
        source: basalt_verity::Error,
    },
    /// A scenario's inputs are not what the scenario relies on.
    #[error("{path}: {problem}")]
    ScenarioInput {
        /// The file inspected.
        path: PathBuf,
        /// What is not as expected.
        problem: String,
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
    /// A test server (nginx, tinyproxy, the faulty HTTP server) could not be started.
    #[error("starting {server}: {detail}")]
    ServerStart {
        /// Which server.
        server: &'static str,
        /// What went wrong (the end of its error log when there is one).
        detail: String,
    },
    /// A socket operation of a test server failed.
    #[error("{what}")]
    Socket {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
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
