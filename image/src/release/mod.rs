//! `basalt release`: publishing built releases into a static release repository, serving the
//! trust-root chain, and listing what a repository holds.
//!
//! Owns: the publisher's side of the repository layout defined in `basalt_manifest::repo`
//! (see [`store`] for the write order and docs/ARCHITECTURE.md for the layout), compressing
//! artifacts as independent zstd frames ([`compress`]), re-signing the manifest with the
//! compression facts, channel and sequence. Does not own: the layout's names
//! (`basalt_manifest::repo`), the frame index format (`basalt_manifest::frames`), the
//! manifest and its signatures (`basalt_manifest`), fetching (the updater).
//!
//! [`publish`] in order (nothing a node reads changes before step 6):
//!
//! 1. lock the repository (`flock` on `REPO/.publish.lock`); load the trust-root chain
//!    `roots/1..N` (each generation checked by `TrustRoot::rotate`);
//! 2. read `RELEASE_DIR/release.json`; set the channel, the sequence (strictly above the
//!    channel head's; default head + 1), the issue time (now) and the expiry (the same
//!    validity as built, or `valid_for`); refuse a version below the head's unless
//!    `allow_downgrade` (then logged);
//! 3. sign that manifest with the keys and verify it against the newest root — unknown keys
//!    or too few for the threshold are refused before any work; check the usr-hash statement
//!    inside `usr.img` against the same root (the node checks it after writing the slot);
//! 4. compress each artifact (frames in parallel), check its size and SHA-256 against the
//!    manifest, store the blob and its frame index (content-addressed, re-hashed if present);
//! 5. sign the final manifest (with `compression` filled in), verify it against the newest
//!    root (threshold, expiry, os/arch/channel);
//! 6. write the history copy `releases/<seq>.signed`, then replace `head.signed` — each
//!    atomically, the head last.
//!
//! **zstd level** ([`DEFAULT_ZSTD_LEVEL`]): measured on the container-host `usr.img` (an
//! erofs already compressed with lz4hc, 306 MB) with 4 MiB frames on 2 cores: see the table
//! at the constant. Level 19 is the default (4.6 % smaller than 9 for every node download,
//! paid once per release).

pub mod adaptive;
pub mod compress;
pub mod delta;
mod error;
pub mod store;
pub mod synthetic;

use std::fs::File;
use std::io::{BufWriter, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use basalt_manifest::chrono::{DateTime, TimeDelta, Utc};
use basalt_manifest::semver::Version;
use basalt_manifest::{
    repo, sign_release, verify_release, verify_usr_hash, ArtifactKind, Compression,
    CompressionAlgorithm, Digest, Document, Envelope, FrameIndex, FrameIndexRef, Manifest, Policy,
    SigningKey, TrustRoot, MAX_RELEASE_BYTES, MAX_TRUST_ROOT_BYTES,
};
use serde::Serialize;

pub use compress::{compress_frames, CompressOptions, Compressed};
pub use error::ReleaseError;
pub use store::Repo;

use crate::build::image::{RELEASE_JSON, USR_IMG};
use error::io;

/// The zstd level `basalt release publish` uses by default: 19.
///
/// Measured 2026-12-02 on the container-host `usr.img` (erofs already compressed with lz4hc,
/// 306 450 432 bytes incl. tree and statement), 4 MiB frames. "publish" is `basalt release
/// publish` end to end on 2 cores of a shared, loaded machine (load average 8–13: compare the
/// ratios, not the seconds; it includes hashing, the statement check and storing the blob);
/// "zstd -b" is the CLI benchmark with `-B4194304` (one core, same frames):
///
/// | level | usr blob (publish) | of usr.img | publish, 2 cores | zstd -b size | zstd -b compress / decompress |
/// |---|---|---|---|---|---|
/// | 1  | 220 813 032 | 72.1 % | 16.6 s  | 222 164 795 | 172 MB/s / 564 MB/s |
/// | 3  | 203 790 223 | 66.5 % | 20.9 s  | 205 761 977 | 22 MB/s* / 600 MB/s |
/// | 9  | 194 299 523 | 63.4 % | 36.7 s  | 195 105 068 | 21 MB/s / 752 MB/s |
/// | 12 | —           |        |         | 194 634 583 | 4.0 MB/s / 740 MB/s |
/// | 19 | 185 346 072 | 60.5 % | 186.5 s | 185 865 681 | 1.1 MB/s / 227 MB/s |
///
/// (* noise from the load.) The image is already lz4hc-compressed, so zstd mostly shrinks
/// lz4's output: 1 → 9 saves 12 %, 9 → 12 nothing, 19 another 4.6 % over 9. A release is
/// compressed once and downloaded by every node, so the default takes level 19: 9 MB less
/// per node and update for ≈ 4.5 core-minutes once per release (frames are compressed in
/// parallel, so a build host with more cores pays proportionally less). Decoding level-19
/// frames runs at ≈ 230 MB/s on one core, still faster than the node writes, syncs and
/// re-reads its slot. Tests and quick iterations pass `--level 3`.
pub const DEFAULT_ZSTD_LEVEL: i32 = 19;

/// What to publish, and how.
#[derive(Debug)]
pub struct PublishRequest<'a> {
    /// A `basalt image build` output folder (`release.json` and the artifact files).
    pub release_dir: &'a Path,
    /// The repository folder (created if missing).
    pub repo: &'a Path,
    /// The channel to publish on (a `[a-z0-9._-]` label).
    pub channel: &'a str,
    /// Signing keys: a threshold of the repository's newest trust root.
    pub keys: &'a [SigningKey],
    /// The sequence; default: the channel head's + 1 (or the built one for a new channel).
    pub sequence: Option<u64>,
    /// Publish a version older than the channel head's (logged).
    pub allow_downgrade: bool,
    /// The issue time of the published manifest.
    pub now: DateTime<Utc>,
    /// Validity from `now`; default: the validity the release was built with.
    pub valid_for: Option<TimeDelta>,
    /// Compression settings.
    pub compress: CompressOptions,
}

/// Default compression settings: [`DEFAULT_ZSTD_LEVEL`], 4 MiB frames, all cores.
pub fn default_compress_options() -> CompressOptions {
    CompressOptions {
        level: DEFAULT_ZSTD_LEVEL,
        frame_len: basalt_manifest::frames::DEFAULT_FRAME_LEN,
        threads: 0,
    }
}

/// One artifact as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublishedArtifact {
    pub name: String,
    pub size: u64,
    pub compressed_size: u64,
    /// The blob (`blobs/sha256/<hex>`).
    pub blob: Digest,
    /// The frame index blob.
    pub frame_index: Digest,
    pub frames: usize,
    /// Whether the blob was written (false: an identical blob was already there).
    pub blob_written: bool,
    /// The adaptive-install blobs of a usr image: (block index, frame store, store size,
    /// frames in the store).
    pub adaptive: Option<PublishedAdaptive>,
}

/// The block index and frame store published for a usr image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublishedAdaptive {
    pub block_index: Digest,
    pub block_index_size: u64,
    pub frame_store: Digest,
    pub frame_store_size: u64,
    pub frames: usize,
    /// Earlier releases of the channel whose blocks shaped the frame cuts.
    pub history: usize,
    /// Binary deltas from those releases, and their bytes (after the frames in the store).
    pub deltas: usize,
    pub delta_bytes: u64,
}

/// What [`publish`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublishReport {
    pub os: String,
    pub version: Version,
    pub channel: String,
    pub arch: String,
    pub sequence: u64,
    /// SHA-256 of the new channel head (the signed envelope).
    pub head_sha256: Digest,
    /// The trust-root generation that verified it.
    pub trust_generation: u64,
    pub expires_at: DateTime<Utc>,
    pub artifacts: Vec<PublishedArtifact>,
    /// A downgrade was published because of the explicit override.
    pub downgrade: bool,
}

fn sha256(bytes: &[u8]) -> Digest {
    Digest::of(bytes)
}

/// The manifest inside a signed release envelope, without checking signatures (the caller
/// decides what to trust).
pub(crate) fn envelope_manifest(bytes: &[u8]) -> Result<Manifest, basalt_manifest::Error> {
    let envelope = Envelope::from_json(bytes, MAX_RELEASE_BYTES, Document::Release)?;
    Manifest::from_json(&envelope.payload)
}

fn read_capped(path: &Path, cap: usize) -> Result<Vec<u8>, ReleaseError> {
    let file = File::open(path).map_err(io("open", path))?;
    let mut out = Vec::new();
    file.take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(io("read", path))?;
    Ok(out)
}

/// The policy a node of `manifest`'s os/arch/channel applies at `now` (no sequence, no
/// installed version: the publisher checks those against the channel head itself).
fn node_policy(manifest: &Manifest, now: DateTime<Utc>) -> Policy {
    Policy {
        os: Some(manifest.os.clone()),
        arch: Some(manifest.arch.clone()),
        channel: Some(manifest.channel.clone()),
        ..Policy::new(now)
    }
}

fn sign_and_verify(
    manifest: &Manifest,
    keys: &[&SigningKey],
    trust: &TrustRoot,
    now: DateTime<Utc>,
) -> Result<Vec<u8>, ReleaseError> {
    let signed = sign_release(manifest, keys).map_err(|source| ReleaseError::Sign {
        source: Box::new(source),
    })?;
    verify_release(&signed, trust, &node_policy(manifest, now)).map_err(|source| {
        ReleaseError::KeysRefused {
            generation: trust.generation(),
            source: Box::new(source),
        }
    })?;
    Ok(signed)
}

/// A release's UKI must boot the release's own `/usr`: the `usrhash=` of its `.cmdline` is
/// the usr artifact's root hash (what the node checks again before staging it). Its
/// signature is not checked here: the repository keys are not the machines' Secure Boot
/// keys, and the firmware is the judge of that.
fn check_uki(release_dir: &Path, manifest: &Manifest) -> Result<(), ReleaseError> {
    let Some(uki) = manifest.artifacts_of(ArtifactKind::Uki).next() else {
        return Ok(());
    };
    let unpublishable = |reason: String| ReleaseError::Unpublishable {
        version: manifest.version.clone(),
        reason,
    };
    let root_hash = manifest
        .artifacts_of(ArtifactKind::Usr)
        .find_map(|a| a.verity.as_ref())
        .map(|v| v.root_hash)
        .ok_or_else(|| unpublishable("the usr artifact has no verity parameters".into()))?;
    let path = release_dir.join(&uki.name);
    let mut file = File::open(&path).map_err(io("open", &path))?;
    let (hash, _) = basalt_identity::pe::uki_usrhash(&mut file, &format!("UKI {}", path.display()))
        .map_err(|e| unpublishable(e.to_string()))?;
    if hash.as_bytes() != &root_hash.0 {
        return Err(unpublishable(format!(
            "UKI {} boots usrhash={}, but the release's usr image has root hash {}",
            path.display(),
            hash.to_hex(),
            root_hash.to_hex()
        )));
    }
    Ok(())
}

/// Check the signed usr-hash statement stored after the hash tree in `usr.img` against
/// `trust`: what the node checks after writing the slot, and `basalt-init` at boot.
fn check_usr_statement(
    path: &Path,
    manifest: &Manifest,
    trust: &TrustRoot,
) -> Result<(), ReleaseError> {
    let version = manifest.version.clone();
    let unpublishable = |reason: String| ReleaseError::Unpublishable {
        version: version.clone(),
        reason,
    };
    let mut usr = manifest.artifacts_of(ArtifactKind::Usr);
    let (Some(artifact), None) = (usr.next(), usr.next()) else {
        return Err(unpublishable(
            "a release needs exactly one usr artifact".into(),
        ));
    };
    let Some(verity) = &artifact.verity else {
        return Err(unpublishable(
            "the usr artifact has no verity parameters".into(),
        ));
    };
    let refused = |reason: String| ReleaseError::UsrStatement {
        path: path.to_path_buf(),
        generation: trust.generation(),
        reason,
    };
    let file = File::open(path).map_err(io("open", path))?;
    let mut head = [0u8; basalt_verity::superblock::SUPERBLOCK_SIZE];
    file.read_exact_at(&mut head, verity.hash_offset)
        .map_err(io("read the verity superblock of", path))?;
    let sb = basalt_verity::Superblock::parse(&head).map_err(|e| {
        refused(format!(
            "no verity superblock at {}: {e}",
            verity.hash_offset
        ))
    })?;
    let at = verity.hash_offset + basalt_initramfs::usrsig::statement_offset(&sb);
    let mut block = vec![0u8; 12 + basalt_initramfs::usrsig::MAX_ENVELOPE];
    let n = file.read_at(&mut block, at).map_err(io("read", path))?;
    block.truncate(n);
    let envelope =
        basalt_initramfs::usrsig::decode_block(&block).map_err(|e| refused(e.to_string()))?;
    let statement = verify_usr_hash(envelope, trust, &verity.root_hash.to_hex())
        .map_err(|e| refused(e.to_string()))?;
    // basalt-init maps the statement's parameters and compares the OS and version: a
    // manifest that says otherwise would install and then never boot.
    if statement.verity != *verity
        || statement.os != manifest.os
        || statement.version != manifest.version
    {
        return Err(refused(format!(
            "it binds {} {} with {:?}, the manifest says {} {} with {:?}",
            statement.os,
            statement.version,
            statement.verity,
            manifest.os,
            manifest.version,
            verity
        )));
    }
    Ok(())
}

/// Every `sysext` artifact passes what a node will check before the slot flip
/// (`basalt_sysext::check_staged`: signed by the repository's newest trust root, named as
/// listed, every block against the signed root hash, the manifest's verity parameters, and
/// compatible with the release's OS): a release a node must refuse is never published.
fn check_extensions(
    dir: &Path,
    manifest: &Manifest,
    trust: &TrustRoot,
) -> Result<(), ReleaseError> {
    let host = basalt_sysext::HostOs::of_release(manifest);
    for artifact in manifest.artifacts_of(ArtifactKind::Sysext) {
        let unpublishable = |reason: String| ReleaseError::Unpublishable {
            version: manifest.version.clone(),
            reason,
        };
        let name = artifact
            .name
            .strip_suffix(basalt_sysext::image::IMAGE_SUFFIX)
            .ok_or_else(|| {
                unpublishable(format!("sysext artifact {} is not NAME.raw", artifact.name))
            })?;
        let verity = artifact.verity.as_ref().ok_or_else(|| {
            unpublishable(format!("sysext artifact {} has no verity", artifact.name))
        })?;
        basalt_sysext::check_staged(&dir.join(&artifact.name), trust, name, verity, &host)
            .map_err(|e| unpublishable(format!("extension {name}: {e}")))?;
    }
    Ok(())
}

/// The channel head's manifest, if the channel has one.
fn read_head(repo: &Repo, head_rel: &str) -> Result<Option<Manifest>, ReleaseError> {
    let Some(bytes) = repo.read_optional(head_rel, MAX_RELEASE_BYTES)? else {
        return Ok(None);
    };
    envelope_manifest(&bytes)
        .map(Some)
        .map_err(|source| ReleaseError::Head {
            path: repo.path(head_rel),
            source: Box::new(source),
        })
}

/// Publish the release in `req.release_dir` on `req.channel` (see the module docs).
pub fn publish(req: &PublishRequest<'_>) -> Result<PublishReport, ReleaseError> {
    publish_inner(req, true)
}

/// [`publish`] without the check of the release's extensions against the trust root and the
/// release's OS: the repository a careless or compromised publisher makes. Only for tests of
/// what a node refuses on its own (`updater/tests/pipeline_extensions.rs`); `basalt release
/// publish` never calls it.
pub fn publish_without_extension_checks(
    req: &PublishRequest<'_>,
) -> Result<PublishReport, ReleaseError> {
    publish_inner(req, false)
}

fn publish_inner(
    req: &PublishRequest<'_>,
    extension_checks: bool,
) -> Result<PublishReport, ReleaseError> {
    let repo = Repo::lock(req.repo)?;
    let trust = repo.trust()?.ok_or_else(|| ReleaseError::NoTrustRoot {
        repo: req.repo.to_path_buf(),
    })?;
    let manifest_path = req.release_dir.join(RELEASE_JSON);
    let json = read_capped(&manifest_path, MAX_RELEASE_BYTES)?;
    let mut manifest =
        Manifest::from_json(&json).map_err(|source| ReleaseError::ReleaseManifest {
            path: manifest_path.clone(),
            source: Box::new(source),
        })?;
    let head_rel =
        repo::head_path(req.channel, &manifest.arch).map_err(|source| ReleaseError::Name {
            source: Box::new(source),
        })?;
    manifest.channel = req.channel.to_owned();

    // 2. Sequence, version, times.
    let head = read_head(&repo, &head_rel)?;
    let sequence = match (&head, req.sequence) {
        (_, Some(s)) => s,
        (Some(h), None) => h.sequence.saturating_add(1),
        (None, None) => manifest.sequence,
    };
    let mut downgrade = false;
    if let Some(h) = &head {
        if sequence <= h.sequence {
            return Err(ReleaseError::SequenceNotAbove {
                channel: manifest.channel.clone(),
                arch: manifest.arch.clone(),
                requested: sequence,
                head: h.sequence,
            });
        }
        if manifest.version.cmp_precedence(&h.version) == std::cmp::Ordering::Less {
            if !req.allow_downgrade {
                return Err(ReleaseError::Downgrade {
                    channel: manifest.channel.clone(),
                    arch: manifest.arch.clone(),
                    version: manifest.version.to_string(),
                    head_version: h.version.to_string(),
                });
            }
            tracing::warn!(
                channel = %manifest.channel,
                arch = %manifest.arch,
                head = %h.version,
                version = %manifest.version,
                "publishing a downgrade because of --allow-downgrade"
            );
            eprintln!(
                "basalt: WARNING: publishing {} over {} on {}/{} (--allow-downgrade)",
                manifest.version, h.version, manifest.channel, manifest.arch
            );
            downgrade = true;
        }
    }
    manifest.sequence = sequence;
    let validity = req
        .valid_for
        .unwrap_or_else(|| manifest.expires_at - manifest.issued_at);
    manifest.issued_at = req.now;
    manifest.expires_at = req.now + validity;

    // 3. The keys satisfy the newest root before any work; the usr statement too.
    let keys: Vec<&SigningKey> = req.keys.iter().collect();
    let mut unsigned = manifest.clone();
    for a in &mut unsigned.artifacts {
        a.compression = None;
    }
    sign_and_verify(&unsigned, &keys, &trust, req.now)?;
    check_usr_statement(&req.release_dir.join(USR_IMG), &manifest, &trust)?;
    if extension_checks {
        check_extensions(req.release_dir, &manifest, &trust)?;
    }
    check_uki(req.release_dir, &manifest)?;

    // 4. Compress and store.
    let mut published = Vec::new();
    let (manifest_channel, manifest_arch) = (manifest.channel.clone(), manifest.arch.clone());
    for artifact in &mut manifest.artifacts {
        let path = req.release_dir.join(&artifact.name);
        let file = File::open(&path).map_err(io("open", &path))?;
        let len = file.metadata().map_err(io("stat", &path))?.len();
        let mismatch = |what, expected: String, found: String| ReleaseError::ArtifactMismatch {
            name: artifact.name.clone(),
            path: path.clone(),
            what,
            expected,
            found,
        };
        if len != artifact.size {
            return Err(mismatch("size", artifact.size.to_string(), len.to_string()));
        }
        let incoming = repo.incoming(&artifact.name)?;
        let compressed = {
            let mut out = BufWriter::with_capacity(1 << 20, &incoming.file);
            compress_frames(&file, len, &mut out, &req.compress).map_err(|e| match e {
                compress::CompressError::Read(source) => ReleaseError::Io {
                    op: "read",
                    path: path.clone(),
                    source,
                },
                compress::CompressError::Write(source) => ReleaseError::Io {
                    op: "write",
                    path: incoming.path.clone(),
                    source,
                },
                compress::CompressError::Frame { frame, source } => ReleaseError::Compress {
                    name: artifact.name.clone(),
                    frame,
                    source,
                },
                compress::CompressError::Index(source) => ReleaseError::FrameIndex {
                    name: artifact.name.clone(),
                    source: Box::new(source),
                },
            })?
        };
        if compressed.sha256 != artifact.sha256 {
            return Err(mismatch(
                "SHA-256",
                artifact.sha256.to_hex(),
                compressed.sha256.to_hex(),
            ));
        }
        let blob_written = repo.put_blob_file(
            &incoming,
            &compressed.compressed_sha256,
            compressed.compressed_size,
        )?;
        let index_bytes = compressed.index.encode();
        let (index_digest, _) = repo.put_blob_bytes(&index_bytes)?;
        artifact.compression = Some(Compression {
            algorithm: CompressionAlgorithm::Zstd,
            compressed_size: compressed.compressed_size,
            compressed_sha256: compressed.compressed_sha256,
            frame_index: Some(FrameIndexRef {
                sha256: index_digest,
                size: index_bytes.len() as u64,
            }),
            adaptive: None,
        });
        // What a node will do with the index: it must parse against the artifact.
        FrameIndex::parse(&index_bytes, artifact).map_err(|source| ReleaseError::FrameIndex {
            name: artifact.name.clone(),
            source: Box::new(source),
        })?;
        let adaptive_published = if artifact.kind == ArtifactKind::Usr {
            Some(publish_adaptive(
                &repo,
                &file,
                artifact,
                &manifest_channel,
                &manifest_arch,
                &req.compress,
            )?)
        } else {
            None
        };
        published.push(PublishedArtifact {
            name: artifact.name.clone(),
            size: len,
            compressed_size: compressed.compressed_size,
            blob: compressed.compressed_sha256,
            frame_index: index_digest,
            frames: compressed.index.frames().len(),
            blob_written,
            adaptive: adaptive_published,
        });
    }

    // 5. Sign and verify the final manifest.
    let signed = sign_and_verify(&manifest, &keys, &trust, req.now)?;

    // 6. History, then the head.
    let hist_rel =
        repo::release_path(&manifest.channel, &manifest.arch, sequence).map_err(|source| {
            ReleaseError::Name {
                source: Box::new(source),
            }
        })?;
    if let Some(existing) = repo.read_optional(&hist_rel, MAX_RELEASE_BYTES)? {
        if existing != signed {
            return Err(ReleaseError::HistoryConflict {
                path: repo.path(&hist_rel),
                sequence,
            });
        }
    }
    repo.write_file(&hist_rel, &signed)?;
    repo.write_file(&head_rel, &signed)?;
    tracing::info!(
        version = %manifest.version,
        channel = %manifest.channel,
        arch = %manifest.arch,
        sequence,
        "published"
    );
    Ok(PublishReport {
        os: manifest.os.clone(),
        version: manifest.version.clone(),
        channel: manifest.channel.clone(),
        arch: manifest.arch.clone(),
        sequence,
        head_sha256: sha256(&signed),
        trust_generation: trust.generation(),
        expires_at: manifest.expires_at,
        artifacts: published,
        downgrade,
    })
}

/// Build and store the block index and frame store of the usr image `artifact` (read from
/// `file`), cut against the channel's last releases, and name both in its `compression`.
fn publish_adaptive(
    repo: &Repo,
    file: &File,
    artifact: &mut basalt_manifest::Artifact,
    channel: &str,
    arch: &str,
    opts: &CompressOptions,
) -> Result<PublishedAdaptive, ReleaseError> {
    let previous = adaptive::previous_releases(repo, channel, arch);
    let incoming = repo.incoming("usr.frames")?;
    let built = {
        let mut out = BufWriter::with_capacity(1 << 20, &incoming.file);
        adaptive::build(
            file,
            artifact,
            &previous,
            opts.level,
            opts.threads,
            &mut out,
        )?
    };
    repo.put_blob_file(&incoming, &built.store_sha256, built.store_size)?;
    let index_bytes = built.index.encode();
    let (index_digest, _) = repo.put_blob_bytes(&index_bytes)?;
    let refs = basalt_manifest::AdaptiveRef {
        block_index: basalt_manifest::BlobRef {
            sha256: index_digest,
            size: index_bytes.len() as u64,
        },
        frame_store: basalt_manifest::BlobRef {
            sha256: built.store_sha256,
            size: built.store_size,
        },
    };
    if let Some(c) = artifact.compression.as_mut() {
        c.adaptive = Some(refs);
    }
    // What a node will do with the index: it must parse against the artifact.
    basalt_manifest::adaptive::BlockIndex::parse(&index_bytes, artifact, built.store_size)
        .map_err(|source| ReleaseError::FrameIndex {
            name: artifact.name.clone(),
            source: Box::new(source),
        })?;
    tracing::info!(
        frames = built.index.frames().len(),
        deltas = built.index.deltas().len(),
        store = built.store_size,
        index = index_bytes.len(),
        history = previous.len(),
        "adaptive block index and frame store published"
    );
    Ok(PublishedAdaptive {
        block_index: index_digest,
        block_index_size: index_bytes.len() as u64,
        frame_store: built.store_sha256,
        frame_store_size: built.store_size,
        frames: built.index.frames().len(),
        history: previous.len(),
        deltas: built.index.deltas().len(),
        delta_bytes: built
            .index
            .deltas()
            .iter()
            .map(|d| u64::from(d.compressed_len))
            .sum(),
    })
}

/// Add trust-root generation `envelope` (read from `path`, for messages) to the repository's
/// chain: generation 1 must be self-signed to its threshold; every later one exactly the
/// next generation, accepted by `TrustRoot::rotate` from the newest published one. An
/// existing generation is never changed (the same bytes again are a no-op). Returns the
/// generation.
pub fn publish_root(repo_dir: &Path, path: &Path, envelope: &[u8]) -> Result<u64, ReleaseError> {
    let repo = Repo::lock(repo_dir)?;
    let refused = |source| ReleaseError::TrustRoot {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    // Which generation does it claim? (Authenticated below, before it is written.)
    let claimed = TrustRoot::from_initial_envelope(envelope)
        .map(|r| r.generation())
        .or_else(|_| {
            let env = Envelope::from_json(envelope, MAX_TRUST_ROOT_BYTES, Document::TrustRoot)?;
            basalt_manifest::TrustRootDocument::from_json(&env.payload).map(|d| d.generation)
        })
        .map_err(refused)?;
    let rel = repo::root_path(claimed);
    if let Some(existing) = repo.read_optional(&rel, MAX_TRUST_ROOT_BYTES)? {
        if existing == envelope {
            // Still re-check the whole chain: the existing files must be sound.
            repo.trust()?;
            return Ok(claimed);
        }
        return Err(ReleaseError::TrustRootChanged {
            path: repo.path(&rel),
            generation: claimed,
        });
    }
    let current = repo.trust()?;
    let current_gen = current.as_ref().map_or(0, TrustRoot::generation);
    if claimed != current_gen + 1 {
        return Err(ReleaseError::TrustRootNotNext {
            path: path.to_path_buf(),
            offered: claimed,
            current: current_gen,
        });
    }
    match &current {
        None => {
            TrustRoot::from_initial_envelope(envelope).map_err(refused)?;
        }
        Some(root) => {
            root.rotate(envelope).map_err(refused)?;
        }
    }
    repo.write_file(&rel, envelope)?;
    tracing::info!(generation = claimed, "trust root published");
    Ok(claimed)
}

/// One release in a channel's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListedRelease {
    pub version: Version,
    pub sequence: u64,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Uncompressed bytes of all artifacts.
    pub size: u64,
    /// Compressed bytes of all artifacts (what a node downloads at most).
    pub compressed_size: u64,
    /// This release is the channel head.
    pub head: bool,
    /// Why the signatures do not verify against the repository's newest trust root, if so
    /// (expiry is not considered).
    pub refused: Option<String>,
    /// The history file.
    pub file: PathBuf,
}

/// One channel/arch of a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListedChannel {
    pub channel: String,
    pub arch: String,
    /// The head's sequence, if the channel has a head.
    pub head_sequence: Option<u64>,
    /// The releases, by sequence.
    pub releases: Vec<ListedRelease>,
}

/// What [`list`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listing {
    /// The newest trust-root generation, if the repository has roots.
    pub trust_generation: Option<u64>,
    pub channels: Vec<ListedChannel>,
}

fn sorted_dir_names(dir: &Path) -> Result<Vec<String>, ReleaseError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("list", dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io("list", dir))?;
        if let Some(name) = entry.file_name().to_str() {
            if !name.starts_with('.') {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// List every channel/arch of the repository with its releases (see [`Listing`]).
pub fn list(repo_dir: &Path) -> Result<Listing, ReleaseError> {
    let repo = Repo::read_only(repo_dir);
    let trust = repo.trust()?;
    let mut channels = Vec::new();
    for channel in sorted_dir_names(&repo.path(repo::CHANNELS_DIR))? {
        let channel_dir = repo.path(repo::CHANNELS_DIR).join(&channel);
        for arch in sorted_dir_names(&channel_dir)? {
            // Only folders with valid names are channels (repo::channel_dir checks them).
            let Ok(head_rel) = repo::head_path(&channel, &arch) else {
                continue;
            };
            let head_bytes = repo.read_optional(&head_rel, MAX_RELEASE_BYTES)?;
            let head_sequence = match &head_bytes {
                Some(b) => Some(
                    envelope_manifest(b)
                        .map_err(|source| ReleaseError::Head {
                            path: repo.path(&head_rel),
                            source: Box::new(source),
                        })?
                        .sequence,
                ),
                None => None,
            };
            let releases_dir = channel_dir.join(&arch).join("releases");
            let mut releases = Vec::new();
            for name in sorted_dir_names(&releases_dir)? {
                let file = releases_dir.join(&name);
                let bytes = read_capped(&file, MAX_RELEASE_BYTES)?;
                let manifest = envelope_manifest(&bytes).map_err(|source| ReleaseError::Head {
                    path: file.clone(),
                    source: Box::new(source),
                })?;
                let refused = match &trust {
                    None => Some("the repository has no trust root".to_owned()),
                    Some(root) => verify_release(&bytes, root, &Policy::new(manifest.issued_at))
                        .err()
                        .map(|e| e.to_string()),
                };
                let sizes = manifest.artifacts.iter().fold((0u64, 0u64), |(s, c), a| {
                    let comp = a.compression.as_ref().map_or(a.size, |c| c.compressed_size);
                    (s + a.size, c + comp)
                });
                releases.push(ListedRelease {
                    head: head_bytes.as_deref() == Some(&bytes[..]),
                    version: manifest.version,
                    sequence: manifest.sequence,
                    issued_at: manifest.issued_at,
                    expires_at: manifest.expires_at,
                    size: sizes.0,
                    compressed_size: sizes.1,
                    refused,
                    file,
                });
            }
            releases.sort_by_key(|r| r.sequence);
            channels.push(ListedChannel {
                channel: channel.clone(),
                arch,
                head_sequence,
                releases,
            });
        }
    }
    Ok(Listing {
        trust_generation: trust.as_ref().map(TrustRoot::generation),
        channels,
    })
}
