//! The error type of [`crate::kernel`]: each variant names the operation that failed and
//! carries the path or package involved.

use std::path::PathBuf;

use crate::tool::ToolError;

/// Result alias for the kernel module.
pub type Result<T, E = KernelError> = std::result::Result<T, E>;

/// Fetching, preparing or reading the Debian kernel failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A system tool (apt-cache, dpkg-deb, depmod, xz) is missing or failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
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
        source: ToolError,
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
    /// `modules.dep` of the kernel could not be read or resolved.
    #[error("kernel modules in {dir}")]
    ModulesDep {
        /// The `lib/modules/<version>` folder.
        dir: PathBuf,
        /// The resolver's error (names the module).
        source: basalt_initramfs::Error,
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
    /// Renaming (publishing) a folder failed.
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
}
