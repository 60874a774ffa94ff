//! The one error type of the crate: each variant names the refusal or the failed operation
//! and carries the file, extension or device involved.

use std::path::PathBuf;

/// Why an extension was refused, or which operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the image (or another file) failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// The image has no statement block where Basalt's layout puts it (the end of the file).
    #[error("{path}: no signed extension statement at the end of the image: {reason}")]
    NoStatement {
        /// The image.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The statement's signatures do not satisfy the trust root (or it is not a sysext
    /// statement at all).
    #[error("{path}: the extension statement is not signed by the trust root: {source}")]
    BadSignature {
        /// The image.
        path: PathBuf,
        /// What the verification said.
        #[source]
        source: Box<basalt_manifest::Error>,
    },
    /// The image is not laid out as the signed parameters say (size, hash area position).
    #[error("{path}: image layout does not match the signed statement: {reason}")]
    Layout {
        /// The image.
        path: PathBuf,
        /// Which fact differs.
        reason: String,
    },
    /// A byte of the data or the hash tree differs from what the signed root hash covers.
    #[error("{path}: altered extension image: {source}")]
    Altered {
        /// The image.
        path: PathBuf,
        /// The verity verdict (names the block).
        #[source]
        source: Box<basalt_verity::Error>,
    },
    /// The signed name is not the name the image was asked for or stored under.
    #[error("{path}: the statement names extension {signed:?}, expected {expected:?}")]
    WrongName {
        /// The image.
        path: PathBuf,
        /// The name asked for (file name or store entry).
        expected: String,
        /// The name that was signed.
        signed: String,
    },
    /// The image's signed parameters are not the ones the release manifest lists for it.
    #[error("{path}: the release manifest lists other verity parameters for {name} (manifest root hash {manifest}, image {image})")]
    ManifestMismatch {
        /// The image.
        path: PathBuf,
        /// The extension.
        name: String,
        /// The manifest's root hash.
        manifest: String,
        /// The image's signed root hash.
        image: String,
    },
    /// The extension is not for the booted OS (ID, level, version, architecture, scope).
    #[error("extension {name} is incompatible with the booted OS: {reason}")]
    Incompatible {
        /// The extension.
        name: String,
        /// The rule that failed, with both values.
        reason: String,
    },
    /// The mounted tree has no `extension-release.NAME`, or it differs from the signed one.
    #[error("extension {name}: {path}: {reason}")]
    ReleaseFile {
        /// The extension.
        name: String,
        /// The release file.
        path: PathBuf,
        /// Missing, or different from the signed text.
        reason: String,
    },
    /// The host's own os-release lacks what compatibility needs.
    #[error("os-release {path}: {reason}")]
    HostRelease {
        /// The host's os-release.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// A store entry is not a usable extension set.
    #[error("extension store {path}: {reason}")]
    Store {
        /// The entry.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No staged set holds an extension of this name (pinning it is refused).
    #[error("no staged extension set in {store} holds an extension named {name}")]
    UnknownExtension {
        /// The name asked for.
        name: String,
        /// The store folder.
        store: PathBuf,
    },
    /// No staged set holds this version of the extension (pinning it is refused).
    #[error("extension {name} {version} is not staged (staged versions: {})", .staged.join(", "))]
    NotStaged {
        /// The extension.
        name: String,
        /// The version asked for.
        version: basalt_manifest::semver::Version,
        /// The versions the store holds.
        staged: Vec<String>,
    },
    /// Setting the image up on the node (loop device, dm-verity, mount, systemd-sysext).
    #[error("activate extension {name}: {operation}: {reason}")]
    Activate {
        /// The extension.
        name: String,
        /// The step (`attach loop device`, `create dm-verity device`, `mount erofs`, …).
        operation: &'static str,
        /// The error.
        reason: String,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `map_err` helper for I/O on `path`.
pub(crate) fn io(
    operation: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        operation,
        path,
        source,
    }
}
