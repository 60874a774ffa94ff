//! The error of an image build: each variant names the step that failed and the path
//! involved.

use std::path::PathBuf;

use super::apt::AptError;
use super::config::ConfigError;
use super::debian::StagingError;
use super::erofs::ErofsError;
use super::rootfs::RootfsError;
use super::workspace::WorkspaceError;
use crate::kernel::KernelError;
use crate::tool::ToolError;

/// An image build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The image definition is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A signing key file could not be read or parsed.
    #[error("load signing key {path}")]
    Key {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No signing key was given.
    #[error("no signing key given (--key): a release must be signed")]
    NoKeys,
    /// The trust root file could not be read or is not a valid initial trust root.
    #[error("load trust root {path}")]
    Trust {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The release signed with the given keys does not verify against the trust root (wrong
    /// keys, too few for the threshold): the image would never boot or update.
    #[error("the release signed with the given keys is refused by the trust root {trust}")]
    KeysDoNotSatisfyTrust {
        trust: PathBuf,
        #[source]
        source: Box<basalt_manifest::Error>,
    },
    /// The basalt-init binary is missing or unreadable.
    #[error("read basalt-init {path} (build it with `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p basalt-initramfs --bin basalt-init --target x86_64-unknown-linux-gnu`)")]
    InitMissing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The basalt-init file is not an x86-64 ELF program.
    #[error("basalt-init {path} is not an ELF64 program")]
    InitNotElf {
        path: PathBuf,
        #[source]
        source: Box<KernelError>,
    },
    /// The basalt-init binary is dynamically linked: it cannot run as PID 1 of an initramfs.
    #[error("basalt-init {path} is dynamically linked; the initramfs needs a static build (RUSTFLAGS='-C target-feature=+crt-static')")]
    InitNotStatic { path: PathBuf },
    /// The kernel could not be fetched or read.
    #[error("kernel: {0}")]
    Kernel(#[from] Box<KernelError>),
    /// Staging the `/usr` tree failed.
    #[error("stage /usr ({profile} profile) in {dir}")]
    Stage {
        profile: &'static str,
        dir: PathBuf,
        #[source]
        source: RootfsError,
    },
    /// Packing the erofs image failed.
    #[error(transparent)]
    Erofs(#[from] ErofsError),
    /// Computing the verity hash tree failed.
    #[error("verity hash tree of {path}")]
    Verity {
        path: PathBuf,
        #[source]
        source: Box<basalt_verity::Error>,
    },
    /// Signing a document failed.
    #[error("sign the {what}")]
    Sign {
        what: &'static str,
        #[source]
        source: Box<basalt_manifest::Error>,
    },
    /// Building the initramfs failed.
    #[error("build the initramfs {path}")]
    Initramfs {
        path: PathBuf,
        #[source]
        source: Box<basalt_initramfs::Error>,
    },
    /// A disk-image step failed.
    #[error("disk image {path}: {step}")]
    Disk {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: Box<basalt_disk::Error>,
    },
    /// Formatting or populating the root partition failed.
    #[error("format the root partition of {path} (ext4): {step}")]
    Mkfs {
        path: PathBuf,
        step: String,
        #[source]
        source: Box<ToolError>,
    },
    /// Resolving the Debian packages failed.
    #[error(transparent)]
    Apt(#[from] AptError),
    /// The Debian staging (mmdebstrap) failed or installed something else than resolved.
    #[error(transparent)]
    Staging(#[from] StagingError),
    /// A Basalt program could not be found or built.
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    /// The resolved packages are not the definition's package list.
    #[error("the packages resolved for {definition} differ from its package list (packages.list): {diff}")]
    PackageListDiffers { definition: PathBuf, diff: String },
    /// A file copied from the build host belongs to no installed Debian package.
    #[error("{path} (copied from the build host into the image) belongs to no Debian package: dpkg-query -S found no owner")]
    HostFileUnowned { path: PathBuf },
    /// An extension of `[[extensions]]` could not be built, or does not fit the release.
    #[error("extension {definition}: {source}")]
    Extension {
        definition: PathBuf,
        #[source]
        source: Box<crate::sysext::SysextError>,
    },
    /// A file operation failed.
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand for an [`BuildError::Io`] mapper.
pub(crate) fn io(
    op: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_owned();
    move |source| BuildError::Io { op, path, source }
}

/// Shorthand for a [`BuildError::Disk`] mapper: `step` names what was being done to `disk`.
pub(crate) fn disk_err(
    step: &'static str,
    disk: &std::path::Path,
) -> impl FnOnce(basalt_disk::Error) -> BuildError {
    let path = disk.to_owned();
    move |source| BuildError::Disk {
        step,
        path,
        source: Box::new(source),
    }
}
