//! The one error type of the update pipeline, and its stable machine names.
//!
//! Every variant names the failed operation and carries what it failed on (artifact, frame,
//! slot, URL or path, version). [`Error::kind`] maps it to an [`ErrorKind`], a failure *class*
//! with a name that never changes meaning ([`ErrorKind::as_str`]): the daemon turns it into
//! the D-Bus error `org.basalt.Updater1.Error.<Name>`, `basaltctl` into its exit code, tests
//! match on it. Pattern: `initramfs/src/reason.rs`. For the daemon, [`ErrorKind::class`] groups
//! the kinds into its `engine::ErrorClass` (Network, Integrity, Policy, Disk, …) and the kind's
//! name is the `EngineError::name` reported in `LastError` and the history.

use std::fmt;
use std::path::PathBuf;

use basalt_disk::Slot;
use basalt_manifest::semver::Version;

use crate::engine::{EngineError, ErrorClass};
use crate::source::SourceError;

/// A failure class of the pipeline. Names are stable (D-Bus error names, exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The repository could not be reached or answered badly (transport, status, timeout).
    Network,
    /// A repository file (channel head, blob, frame index) does not exist.
    NotFound,
    /// A body was shorter or longer than the signed size, or than announced (a connection
    /// closed mid-body included). Transport-level: retried later (nothing of it is trusted).
    LengthMismatch,
    /// The trust-root chain could not be walked (a refused rotation, an unusable anchor).
    TrustRootRefused,
    /// The channel head's signatures do not satisfy the trust root (threshold, unknown or bad
    /// key, malformed or oversized envelope, wrong document type).
    SignatureRefused,
    /// The release or the trust root has expired, or was issued in the future.
    Expired,
    /// The channel head's sequence is below the highest this node accepted.
    Replay,
    /// The channel head has the sequence already seen but other bytes.
    Equivocation,
    /// The release is older than the installed version (no override).
    Downgrade,
    /// The release is for another OS, architecture or channel.
    WrongTarget,
    /// The manifest is valid but not installable by this node (no usr image, no frame index,
    /// unsupported compression…).
    InvalidRelease,
    /// Fetched bytes do not match the signed digests (a frame, a blob, an artifact), or do
    /// not decode.
    IntegrityMismatch,
    /// The written slot, read back, does not verify (verity tree, root hash, usr-hash
    /// statement).
    VerificationFailed,
    /// No slot of the disk is the booted one (the kernel's `usrhash=` names none).
    NoBootedSlot,
    /// The booted slot is still being tried (not blessed): the other slot is its fallback and
    /// must not be overwritten.
    BootedSlotPending,
    /// A write to the booted slot was refused (`basalt_disk::Error::BootedSlot`).
    BootedSlot,
    /// The booted slot already holds this release's `/usr`.
    AlreadyInstalled,
    /// The image does not fit the inactive slot's partitions.
    SlotTooSmall,
    /// No space left (the disk, the state folder or the ESP).
    DiskFull,
    /// The disk's partition table or slots could not be read or written.
    Disk,
    /// The boot-control backend refused or failed.
    BootControl,
    /// The ESP is mounted while it would be written raw.
    EspBusy,
    /// The pipeline's own state (state folder, journal) is unusable.
    State,
    /// `apply` without a complete, verified download of that release in the slot.
    NotDownloaded,
    /// The caller cancelled the call.
    Cancelled,
    /// Another local I/O error.
    Io,
    /// The node has no repository configured.
    NoRepository,
    /// No staged extension set holds an extension of that name (a pin request).
    UnknownExtension,
    /// The extension version asked for is not staged (a pin request).
    ExtensionNotStaged,
    /// The release would replace a pinned extension version (a full update) or the staged
    /// set no longer holds the pinned version.
    ExtensionPinned,
}

impl ErrorKind {
    /// Every kind, for tests and documentation.
    pub const ALL: [ErrorKind; 30] = [
        ErrorKind::Network,
        ErrorKind::NotFound,
        ErrorKind::LengthMismatch,
        ErrorKind::TrustRootRefused,
        ErrorKind::SignatureRefused,
        ErrorKind::Expired,
        ErrorKind::Replay,
        ErrorKind::Equivocation,
        ErrorKind::Downgrade,
        ErrorKind::WrongTarget,
        ErrorKind::InvalidRelease,
        ErrorKind::IntegrityMismatch,
        ErrorKind::VerificationFailed,
        ErrorKind::NoBootedSlot,
        ErrorKind::BootedSlotPending,
        ErrorKind::BootedSlot,
        ErrorKind::AlreadyInstalled,
        ErrorKind::SlotTooSmall,
        ErrorKind::DiskFull,
        ErrorKind::Disk,
        ErrorKind::BootControl,
        ErrorKind::EspBusy,
        ErrorKind::State,
        ErrorKind::NotDownloaded,
        ErrorKind::Cancelled,
        ErrorKind::Io,
        ErrorKind::NoRepository,
        ErrorKind::UnknownExtension,
        ErrorKind::ExtensionNotStaged,
        ErrorKind::ExtensionPinned,
    ];

    /// The stable name (`org.basalt.Updater1.Error.<name>`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Network => "Network",
            ErrorKind::NotFound => "NotFound",
            ErrorKind::LengthMismatch => "LengthMismatch",
            ErrorKind::TrustRootRefused => "TrustRootRefused",
            ErrorKind::SignatureRefused => "SignatureRefused",
            ErrorKind::Expired => "Expired",
            ErrorKind::Replay => "Replay",
            ErrorKind::Equivocation => "Equivocation",
            ErrorKind::Downgrade => "Downgrade",
            ErrorKind::WrongTarget => "WrongTarget",
            ErrorKind::InvalidRelease => "InvalidRelease",
            ErrorKind::IntegrityMismatch => "IntegrityMismatch",
            ErrorKind::VerificationFailed => "VerificationFailed",
            ErrorKind::NoBootedSlot => "NoBootedSlot",
            ErrorKind::BootedSlotPending => "BootedSlotPending",
            ErrorKind::BootedSlot => "BootedSlot",
            ErrorKind::AlreadyInstalled => "AlreadyInstalled",
            ErrorKind::SlotTooSmall => "SlotTooSmall",
            ErrorKind::DiskFull => "DiskFull",
            ErrorKind::Disk => "Disk",
            ErrorKind::BootControl => "BootControl",
            ErrorKind::EspBusy => "EspBusy",
            ErrorKind::State => "State",
            ErrorKind::NotDownloaded => "NotDownloaded",
            ErrorKind::Cancelled => "Cancelled",
            ErrorKind::Io => "Io",
            ErrorKind::NoRepository => "NoRepository",
            ErrorKind::UnknownExtension => "UnknownExtension",
            ErrorKind::ExtensionNotStaged => "ExtensionNotStaged",
            ErrorKind::ExtensionPinned => "ExtensionPinned",
        }
    }

    /// The daemon's failure class (what it does about it, which D-Bus error the caller
    /// sees); the kind itself travels as the exact name (`EngineError::name`).
    pub fn class(self) -> ErrorClass {
        match self {
            ErrorKind::Network | ErrorKind::NotFound | ErrorKind::LengthMismatch => {
                ErrorClass::Network
            }
            ErrorKind::SignatureRefused
            | ErrorKind::IntegrityMismatch
            | ErrorKind::VerificationFailed => ErrorClass::Integrity,
            ErrorKind::TrustRootRefused
            | ErrorKind::Expired
            | ErrorKind::Replay
            | ErrorKind::Equivocation
            | ErrorKind::Downgrade
            | ErrorKind::WrongTarget
            | ErrorKind::InvalidRelease
            | ErrorKind::BootedSlotPending
            | ErrorKind::AlreadyInstalled
            | ErrorKind::UnknownExtension
            | ErrorKind::ExtensionNotStaged
            | ErrorKind::ExtensionPinned => ErrorClass::Policy,
            ErrorKind::NoBootedSlot
            | ErrorKind::BootedSlot
            | ErrorKind::SlotTooSmall
            | ErrorKind::DiskFull
            | ErrorKind::Disk
            | ErrorKind::Io => ErrorClass::Disk,
            ErrorKind::BootControl | ErrorKind::EspBusy => ErrorClass::BootControl,
            ErrorKind::State | ErrorKind::NotDownloaded | ErrorKind::NoRepository => {
                ErrorClass::Config
            }
            ErrorKind::Cancelled => ErrorClass::Cancelled,
        }
    }

    /// Whether retrying the same call later may succeed without anyone changing the release
    /// or the node (network trouble, a full disk being cleaned up, a cancelled call).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Network
                | ErrorKind::NotFound
                | ErrorKind::LengthMismatch
                | ErrorKind::DiskFull
                | ErrorKind::Cancelled
                | ErrorKind::Io
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a digest check was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// The compressed bytes of frame `n` (checked before decoding).
    CompressedFrame(usize),
    /// The decoded bytes of frame `n`.
    Frame(usize),
    /// The whole compressed blob (when the download started at byte 0).
    Blob,
    /// The whole uncompressed artifact.
    Artifact,
    /// The frame index blob.
    FrameIndex,
    /// The block index blob of an adaptive install.
    BlockIndex,
    /// The compressed bytes of frame `n` of an adaptive frame store.
    StoreFrame(usize),
    /// Block `n` of the booted slot, as copied by an adaptive install.
    Block(u64),
    /// The compressed bytes of binary delta `n` of an adaptive frame store.
    Delta(usize),
}

impl fmt::Display for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checked::CompressedFrame(n) => write!(f, "compressed frame {n}"),
            Checked::Frame(n) => write!(f, "decoded frame {n}"),
            Checked::Blob => f.write_str("compressed blob"),
            Checked::Artifact => f.write_str("artifact"),
            Checked::FrameIndex => f.write_str("frame index"),
            Checked::BlockIndex => f.write_str("block index"),
            Checked::StoreFrame(n) => write!(f, "frame-store frame {n}"),
            Checked::Block(n) => write!(f, "booted-slot block {n}"),
            Checked::Delta(n) => write!(f, "frame-store delta {n}"),
        }
    }
}

/// Everything that can go wrong in the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Fetching from the repository failed.
    #[error("fetch {what}: {source}")]
    Fetch {
        /// What was fetched (e.g. "channel head", "usr.img frames 3..").
        what: String,
        #[source]
        source: SourceError,
    },
    /// The trust root shipped with the OS cannot be read or is invalid.
    #[error("trust root {path}: {source}")]
    Anchor {
        path: PathBuf,
        #[source]
        source: Box<basalt_manifest::Error>,
    },
    /// The repository's next trust-root generation is refused.
    #[error("trust root generation {generation} from {location} is refused: {source}")]
    TrustRotation {
        generation: u64,
        location: String,
        #[source]
        source: Box<basalt_manifest::Error>,
    },
    /// More trust-root generations than the walk allows in one check.
    #[error("the repository offers more than {steps} trust-root generations after {from}; refusing to walk further")]
    TrustChainTooLong { from: u64, steps: u64 },
    /// The channel head is refused by signature or policy checks.
    #[error("channel head {location}: {source}")]
    Head {
        location: String,
        #[source]
        source: Box<basalt_manifest::Error>,
    },
    /// The channel head's sequence is below the highest accepted: replayed metadata.
    #[error("channel head {location} has sequence {sequence} (version {version}), below the {highest_seen} this node already accepted: replayed or rolled-back metadata")]
    Replay {
        location: String,
        sequence: u64,
        version: Version,
        highest_seen: u64,
    },
    /// Same sequence as the one accepted, other bytes: the repository signed two different
    /// releases under one sequence (equivocation, or a compromised key).
    #[error("channel head {location} has sequence {sequence} like the one already accepted, but other bytes (sha256 {found}, accepted {accepted}): equivocation")]
    Equivocation {
        location: String,
        sequence: u64,
        accepted: String,
        found: String,
    },
    /// The release cannot be installed by this pipeline.
    #[error("release {version}: {reason}")]
    Unusable { version: Version, reason: String },
    /// The release's unified kernel image does not boot the release's own `/usr`: its
    /// signed `.cmdline` names another `usrhash=` than the usr artifact's verity root hash,
    /// none, or cannot be read. The bytes are the signed ones (their sha256 matched), so the
    /// release itself is inconsistent; nothing is staged.
    #[error("release {version}: UKI {artifact} ({}): {reason}", path.display())]
    Uki {
        version: Version,
        artifact: String,
        path: PathBuf,
        reason: String,
    },
    /// A length check failed (fewer or more bytes than signed).
    #[error("{artifact} from {location}: {detail}")]
    Length {
        artifact: String,
        location: String,
        detail: String,
    },
    /// A digest did not match the signed one.
    #[error("{artifact} from {location}: {what} has sha256 {found}, the signed manifest says {expected}")]
    Digest {
        artifact: String,
        location: String,
        what: Checked,
        expected: String,
        found: String,
    },
    /// A frame did not decode (after its compressed digest matched: a publisher bug).
    #[error("{artifact}: frame {frame} does not decode to its {len} bytes: {detail}")]
    Decode {
        artifact: String,
        frame: usize,
        len: u32,
        detail: String,
    },
    /// The frame index does not fit its artifact.
    #[error("{artifact}: frame index {location}: {source}")]
    FrameIndex {
        artifact: String,
        location: String,
        #[source]
        source: Box<basalt_manifest::Error>,
    },
    /// The written slot does not verify when read back.
    #[error("slot {slot}, read back after writing {version}: {source}")]
    Reverify {
        slot: Slot,
        version: Version,
        #[source]
        source: basalt_verity::Error,
    },
    /// A slot read or hashed through its verity tree during an adaptive install (the booted
    /// slot's tree does not verify; the new tree cannot be computed).
    #[error("slot {slot} during an adaptive install: {source}")]
    LocalSlot {
        slot: Slot,
        #[source]
        source: basalt_verity::Error,
    },
    /// The usr-hash statement written with the slot is refused.
    #[error("slot {slot}, read back after writing {version}: the usr-hash statement after the hash tree is refused: {reason}")]
    Statement {
        slot: Slot,
        version: Version,
        reason: String,
    },
    /// The kernel command line names no slot of the disk.
    #[error("{disk}: no slot is the booted one (kernel command line usrhash={usrhash}); refusing to pick a slot to write")]
    NoBootedSlot { disk: PathBuf, usrhash: String },
    /// The booted slot is still on trial: its fallback must stay.
    #[error("the booted slot {slot} is still being tried (not marked good); slot {} is its fallback and is not overwritten", !*slot)]
    BootedSlotPending { slot: Slot },
    /// The booted slot already runs this `/usr`.
    #[error("the booted slot {slot} already holds release {version} (root hash {root_hash})")]
    AlreadyInstalled {
        slot: Slot,
        version: Version,
        root_hash: String,
    },
    /// The image does not fit the slot.
    #[error("release {version} needs {needed} bytes in the {part} partition of slot {slot}, which holds {capacity}")]
    SlotTooSmall {
        version: Version,
        slot: Slot,
        part: &'static str,
        capacity: u64,
        needed: u64,
    },
    /// A `basalt-disk` operation failed.
    #[error("{op}: {source}")]
    Disk {
        op: &'static str,
        #[source]
        source: basalt_disk::Error,
    },
    /// A boot-control operation failed.
    #[error("boot control ({backend}): {op} slot {slot}: {source}")]
    Boot {
        backend: &'static str,
        op: &'static str,
        slot: Slot,
        #[source]
        source: basalt_disk::Error,
    },
    /// The ESP partition is mounted while it would be written raw.
    #[error("the ESP (partition {partition} of {disk}) is mounted at {mountpoint}: configure the mounted ESP folder instead of raw access, or unmount it")]
    EspMounted {
        disk: PathBuf,
        partition: u32,
        mountpoint: String,
    },
    /// A local file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The pipeline's state is unusable.
    #[error("state {path}: {reason}")]
    State { path: PathBuf, reason: String },
    /// `apply` without a verified download of that release.
    #[error("slot {slot} does not hold a verified download of {version}: {reason}")]
    NotDownloaded {
        slot: Slot,
        version: Version,
        reason: String,
    },
    /// The caller cancelled.
    #[error("cancelled while {during}")]
    Cancelled { during: String },
    /// A system extension of the release is refused at staging (or its staged copy at
    /// apply): bad signature, altered byte, wrong name, verity parameters other than the
    /// manifest's, incompatible with the new OS (`ID=`/`SYSEXT_LEVEL=`/`VERSION_ID=`).
    #[error("extension {name} of release {version}: {source}")]
    Extension {
        name: String,
        version: Version,
        #[source]
        source: Box<basalt_sysext::Error>,
    },
    /// Node-image-only: an extension of the booted set does not fit the new OS (or no
    /// longer verifies); the update is refused rather than the extension dropped.
    #[error("node-image-only update to {to}: extension {name} of {from} cannot be kept: {source} (a full update, update.node_image_only = false, moves OS and extensions together)")]
    ExtensionNotKept {
        name: String,
        from: Version,
        to: Version,
        #[source]
        source: Box<basalt_sysext::Error>,
    },
    /// A pin request refused: the extension or version is not staged, the image does not
    /// verify, or it does not fit the booted OS.
    #[error("pin extension {name} {version}: {source}")]
    ExtensionPin {
        name: String,
        version: Version,
        #[source]
        source: Box<basalt_sysext::Error>,
    },
    /// A full update would replace a pinned extension (or drop it): refused, never silently.
    #[error("extension {name} is pinned at {pinned}, release {release} {}: unpin it (basaltctl extensions unpin {name}) or update node-image-only (update.node_image_only = true)", ships(.name, .shipped))]
    ExtensionPinned {
        name: String,
        // Boxed: the error stays small (clippy::result_large_err).
        pinned: Box<Version>,
        release: Version,
        shipped: Option<Box<Version>>,
    },
}

/// What a release ships of a pinned extension, for [`Error::ExtensionPinned`].
fn ships(name: &str, shipped: &Option<Box<Version>>) -> String {
    match shipped {
        Some(v) => format!("ships {name} {v}"),
        None => "does not ship it".to_owned(),
    }
}

fn sysext_kind(e: &basalt_sysext::Error) -> ErrorKind {
    use basalt_sysext::Error as S;
    match e {
        S::BadSignature { .. } | S::NoStatement { .. } | S::WrongName { .. } => {
            ErrorKind::SignatureRefused
        }
        S::Altered { .. } | S::Layout { .. } | S::ManifestMismatch { .. } => {
            ErrorKind::IntegrityMismatch
        }
        S::Incompatible { .. } | S::ReleaseFile { .. } | S::HostRelease { .. } => {
            ErrorKind::InvalidRelease
        }
        S::Io { source, .. } if is_no_space(source) => ErrorKind::DiskFull,
        S::Store { .. } => ErrorKind::State,
        S::UnknownExtension { .. } => ErrorKind::UnknownExtension,
        S::NotStaged { .. } => ErrorKind::ExtensionNotStaged,
        _ => ErrorKind::Io,
    }
}

fn is_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EFBIG) | Some(libc::EDQUOT)
    ) || e.kind() == std::io::ErrorKind::StorageFull
}

fn manifest_kind(e: &basalt_manifest::Error) -> ErrorKind {
    use basalt_manifest::Error as M;
    match e {
        M::Expired { .. } | M::IssuedInFuture { .. } | M::TrustRootExpired { .. } => {
            ErrorKind::Expired
        }
        M::SequenceNotNewer { .. } => ErrorKind::Replay,
        M::Downgrade { .. } => ErrorKind::Downgrade,
        M::WrongOs { .. } | M::WrongArch { .. } | M::WrongChannel { .. } => ErrorKind::WrongTarget,
        M::UnsupportedSchemaVersion { .. } | M::InvalidContent { .. } => ErrorKind::InvalidRelease,
        _ => ErrorKind::SignatureRefused,
    }
}

fn disk_kind(e: &basalt_disk::Error) -> ErrorKind {
    use basalt_disk::Error as D;
    match e {
        D::BootedSlot { .. } => ErrorKind::BootedSlot,
        D::SlotTooSmall { .. } => ErrorKind::SlotTooSmall,
        D::EspFull { .. } => ErrorKind::DiskFull,
        D::Io { source, .. } | D::EspIo { source, .. } if is_no_space(source) => {
            ErrorKind::DiskFull
        }
        _ => ErrorKind::Disk,
    }
}

impl Error {
    /// The failure class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Fetch { source, .. } => match source {
                SourceError::NotFound { .. } => ErrorKind::NotFound,
                SourceError::Length { .. } => ErrorKind::LengthMismatch,
                SourceError::Io { source, .. } if is_no_space(source) => ErrorKind::DiskFull,
                SourceError::NotConfigured { .. } => ErrorKind::NoRepository,
                _ => ErrorKind::Network,
            },
            Error::Anchor { .. }
            | Error::TrustRotation { .. }
            | Error::TrustChainTooLong { .. } => ErrorKind::TrustRootRefused,
            Error::Head { source, .. } => manifest_kind(source),
            Error::Replay { .. } => ErrorKind::Replay,
            Error::Equivocation { .. } => ErrorKind::Equivocation,
            Error::Unusable { .. } | Error::Uki { .. } => ErrorKind::InvalidRelease,
            Error::Length { .. } => ErrorKind::LengthMismatch,
            Error::Digest { .. } | Error::Decode { .. } | Error::FrameIndex { .. } => {
                ErrorKind::IntegrityMismatch
            }
            Error::Reverify { source, .. } => match source {
                basalt_verity::Error::Read { source, .. } if is_no_space(source) => {
                    ErrorKind::DiskFull
                }
                _ => ErrorKind::VerificationFailed,
            },
            Error::Statement { .. } | Error::LocalSlot { .. } => ErrorKind::VerificationFailed,
            Error::NoBootedSlot { .. } => ErrorKind::NoBootedSlot,
            Error::BootedSlotPending { .. } => ErrorKind::BootedSlotPending,
            Error::AlreadyInstalled { .. } => ErrorKind::AlreadyInstalled,
            Error::SlotTooSmall { .. } => ErrorKind::SlotTooSmall,
            Error::Disk { source, .. } => disk_kind(source),
            Error::Boot { source, .. } => match disk_kind(source) {
                ErrorKind::Disk => ErrorKind::BootControl,
                other => other,
            },
            Error::EspMounted { .. } => ErrorKind::EspBusy,
            Error::Io { source, .. } if is_no_space(source) => ErrorKind::DiskFull,
            Error::Io { .. } => ErrorKind::Io,
            Error::State { .. } => ErrorKind::State,
            Error::NotDownloaded { .. } => ErrorKind::NotDownloaded,
            Error::Cancelled { .. } => ErrorKind::Cancelled,
            Error::Extension { source, .. }
            | Error::ExtensionNotKept { source, .. }
            | Error::ExtensionPin { source, .. } => sysext_kind(source),
            Error::ExtensionPinned { .. } => ErrorKind::ExtensionPinned,
        }
    }
}

impl EngineError for Error {
    fn class(&self) -> ErrorClass {
        self.kind().class()
    }

    fn name(&self) -> &'static str {
        self.kind().as_str()
    }
}

/// `Error::Io` for `op` on `path`.
pub(crate) fn io<'a>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// `Error::Disk` for `op`.
pub(crate) fn disk(op: &'static str) -> impl FnOnce(basalt_disk::Error) -> Error {
    move |source| Error::Disk { op, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_stable() {
        let names: std::collections::BTreeSet<_> =
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), ErrorKind::ALL.len());
        for n in &names {
            assert!(n.chars().all(|c| c.is_ascii_alphanumeric()), "{n}");
            assert!(n.starts_with(|c: char| c.is_ascii_uppercase()), "{n}");
        }
        // A few names other components match on; changing them breaks the D-Bus API.
        assert_eq!(ErrorKind::Replay.as_str(), "Replay");
        assert_eq!(ErrorKind::IntegrityMismatch.as_str(), "IntegrityMismatch");
        assert_eq!(ErrorKind::Cancelled.as_str(), "Cancelled");
    }

    #[test]
    fn no_space_is_disk_full_wherever_it_happens() {
        let enospc = || std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e = Error::Io {
            op: "write",
            path: "/var/lib/basalt/x".into(),
            source: enospc(),
        };
        assert_eq!(e.kind(), ErrorKind::DiskFull);
        let e = Error::Disk {
            op: "write slot",
            source: basalt_disk::Error::Io {
                op: "write partition range of",
                path: "/dev/vda".into(),
                source: std::io::Error::from_raw_os_error(libc::EFBIG),
            },
        };
        assert_eq!(e.kind(), ErrorKind::DiskFull);
    }
}
