//! The error of publishing or listing a release repository: each variant names the step that
//! failed and the file, channel, version or generation involved.

use std::path::PathBuf;

use basalt_manifest::semver::Version;

/// Publishing, listing or adding a trust root failed.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// A file or folder operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An atomic replace (temporary file, fsync, rename, fsync dir) failed.
    #[error("replace {path}")]
    Replace {
        path: PathBuf,
        #[source]
        source: basalt_fsutil::Error,
    },
    /// The repository has no trust root yet: `basalt release publish-root` first.
    #[error(
        "{repo} has no trust root (roots/1.root.json); publish one with \
         `basalt release publish-root --repo {repo} ROOT.json` first"
    )]
    NoTrustRoot { repo: PathBuf },
    /// A trust root of the repository (or the one offered) is refused.
    #[error("trust root {path}: {source}")]
    TrustRoot {
        path: PathBuf,
        #[source]
        source: Box<basalt_manifest::Error>,
    },
    /// The generations in `roots/` are not 1, 2, … without gaps.
    #[error("{repo}: trust roots are not a gap-free chain from generation 1: {reason}")]
    TrustChainGap { repo: PathBuf, reason: String },
    /// A trust root offered for publishing is not the next generation.
    #[error(
        "trust root {path} is generation {offered}; the repository holds {current} \
         generation(s), so only generation {} can be added",
        current + 1
    )]
    TrustRootNotNext {
        path: PathBuf,
        offered: u64,
        current: u64,
    },
    /// Publishing a trust root generation that already exists with other bytes.
    #[error("{path} already holds trust root generation {generation} with other bytes; a published generation never changes")]
    TrustRootChanged { path: PathBuf, generation: u64 },
    /// The release directory's manifest is missing or invalid.
    #[error("release manifest {path}: {source}")]
    ReleaseManifest {
        path: PathBuf,
        #[source]
        source: Box<basalt_manifest::Error>,
    },
    /// An artifact file does not match what the release manifest says about it.
    #[error("artifact {name} ({path}): {what} is {found}, the release manifest says {expected}")]
    ArtifactMismatch {
        name: String,
        path: PathBuf,
        what: &'static str,
        expected: String,
        found: String,
    },
    /// zstd failed on a frame.
    #[error("compress frame {frame} of artifact {name}: {source}")]
    Compress {
        name: String,
        frame: usize,
        #[source]
        source: std::io::Error,
    },
    /// A frame index could not be built or does not match its artifact.
    #[error("frame index of artifact {name}: {source}")]
    FrameIndex {
        name: String,
        #[source]
        source: Box<basalt_manifest::Error>,
    },
    /// The channel head cannot be read (not a release envelope).
    #[error("channel head {path}: {source}")]
    Head {
        path: PathBuf,
        #[source]
        source: Box<basalt_manifest::Error>,
    },
    /// The requested sequence is not above the channel head's.
    #[error(
        "sequence {requested} is not above the head of channel {channel}/{arch} \
         (sequence {head}): nodes would refuse it as a replay"
    )]
    SequenceNotAbove {
        channel: String,
        arch: String,
        requested: u64,
        head: u64,
    },
    /// The version is older than the channel head's and no override was given.
    #[error(
        "version {version} is older than {head_version}, the head of channel {channel}/{arch}; \
         pass --allow-downgrade to publish it anyway"
    )]
    Downgrade {
        channel: String,
        arch: String,
        version: String,
        head_version: String,
    },
    /// Signing failed (invalid manifest after the changes, encoding).
    #[error("sign the release manifest: {source}")]
    Sign {
        #[source]
        source: Box<basalt_manifest::Error>,
    },
    /// The release signed with the given keys does not verify against the repository's newest
    /// trust root (unknown key, below threshold, expired root): nothing was made visible.
    #[error(
        "the release signed with the given keys is refused by the repository's trust root \
         (generation {generation}); nothing was published: {source}"
    )]
    KeysRefused {
        generation: u64,
        #[source]
        source: Box<basalt_manifest::Error>,
    },
    /// The signed `/usr` root-hash statement inside `usr.img` does not verify against the
    /// repository's newest trust root: nodes would refuse the written slot.
    #[error("the usr-hash statement in {path} is refused by the repository's trust root (generation {generation}): {reason}")]
    UsrStatement {
        path: PathBuf,
        generation: u64,
        reason: String,
    },
    /// The release lacks something a node needs to install it.
    #[error("release {version}: {reason}")]
    Unpublishable { version: Version, reason: String },
    /// The history already holds another manifest under this sequence.
    #[error(
        "{path} already holds another release with sequence {sequence}; history files never change"
    )]
    HistoryConflict { path: PathBuf, sequence: u64 },
    /// A channel or arch name cannot be a repository folder.
    #[error("{source}")]
    Name {
        #[source]
        source: Box<basalt_manifest::Error>,
    },
}

/// `ReleaseError::Io` for `op` on `path`.
pub(crate) fn io<'a>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> ReleaseError + 'a {
    move |source| ReleaseError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// `ReleaseError::Replace` for `path`.
pub(crate) fn replace(
    path: &std::path::Path,
) -> impl FnOnce(basalt_fsutil::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Replace {
        path: path.to_path_buf(),
        source,
    }
}
