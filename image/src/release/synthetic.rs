//! Synthetic releases: a complete release folder (what `basalt image build` writes, minus
//! the disk image) whose `/usr` payload is generated instead of built from packages.
//!
//! Everything a node checks is real — the verity superblock and tree (`seal_usr_image`, the
//! builder's own code), the signed usr-hash statement after the tree, the signed manifest —
//! only the bytes are arbitrary: a seeded mix of incompressible and repetitive blocks, so
//! zstd has something to do and two versions differ. Built in seconds at any size, which is
//! what the data-path tests (tens of MiB) and the install benchmark (≥ 512 MiB) need; the
//! kernel and initramfs files are placeholders, never booted.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use basalt_manifest::chrono::{DateTime, TimeDelta, Utc};
use basalt_manifest::semver::Version;
use basalt_manifest::{
    sign_release, Artifact, ArtifactKind, Digest, Manifest, SigningKey, Verity, SCHEMA_VERSION,
};

use super::error::{io, ReleaseError};
use super::store::sha256_reader;
use crate::build::image::{
    seal_usr_image, INITRD_IMG, RELEASE_JSON, RELEASE_SIGNED, USR_IMG, VMLINUZ,
};

/// What to generate.
#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    pub os: String,
    pub version: Version,
    pub channel: String,
    pub arch: String,
    /// The manifest's sequence as built (publishing may replace it).
    pub sequence: u64,
    /// Bytes of the `/usr` filesystem part (rounded up to 4 KiB).
    pub usr_len: u64,
    /// Bytes of the placeholder kernel and initramfs.
    pub kernel_len: u64,
    pub initrd_len: u64,
    /// Seed of the payload bytes (same seed, same bytes).
    pub seed: u64,
    pub issued_at: DateTime<Utc>,
    pub valid_for: TimeDelta,
    /// The manifest's `sysext_level` (the OS's `SYSEXT_LEVEL=`).
    pub sysext_level: Option<String>,
    /// Extension images (`NAME.raw`, built by `basalt sysext build`) copied into the release
    /// and listed as `sysext` artifacts with their signed verity parameters.
    pub extensions: Vec<PathBuf>,
}

impl SyntheticSpec {
    /// A small release `version` of OS `basalt` on `stable`/`x86_64`: 1 MiB of `/usr`,
    /// 64 KiB kernel and initramfs, valid for a year from `issued_at`.
    pub fn small(version: &str, issued_at: DateTime<Utc>) -> Result<SyntheticSpec, ReleaseError> {
        let version = Version::parse(version).map_err(|e| ReleaseError::Unpublishable {
            version: Version::new(0, 0, 0),
            reason: format!("version {version:?}: {e}"),
        })?;
        Ok(SyntheticSpec {
            os: "basalt".into(),
            seed: version.major * 1000 + version.minor * 10 + version.patch,
            sequence: version.major.max(1),
            version,
            channel: "stable".into(),
            arch: "x86_64".into(),
            usr_len: 1 << 20,
            kernel_len: 64 << 10,
            initrd_len: 64 << 10,
            issued_at,
            valid_for: TimeDelta::days(365),
            sysext_level: None,
            extensions: Vec::new(),
        })
    }
}

/// What was generated.
#[derive(Debug, Clone)]
pub struct SyntheticRelease {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The signed manifest (`release.signed`).
    pub signed: Vec<u8>,
    pub root_hash: Digest,
    /// Where the hash area starts in `usr.img` (= the filesystem part's length).
    pub hash_offset: u64,
}

/// xorshift64*: a fast, seeded byte source (not for secrets).
struct Bytes(u64);

impl Bytes {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fill one 4 KiB block: 3 in 4 blocks random (like compressed erofs data), the rest a
    /// repeated short pattern (metadata, zero runs).
    fn block(&mut self, out: &mut [u8]) {
        let kind = self.next();
        if kind % 4 == 0 {
            let pattern = self.next().to_le_bytes();
            for (i, b) in out.iter_mut().enumerate() {
                *b = pattern[i % 8 % (1 + (kind >> 8) as usize % 8)];
            }
        } else {
            for chunk in out.chunks_mut(8) {
                let v = self.next().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
        }
    }
}

fn write_payload(path: &Path, len: u64, seed: u64) -> Result<(), ReleaseError> {
    let file = File::create(path).map_err(io("create", path))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut gen = Bytes(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut block = [0u8; 4096];
    let mut left = len;
    while left > 0 {
        gen.block(&mut block);
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n]).map_err(io("write", path))?;
        left -= n as u64;
    }
    out.into_inner()
        .map_err(|e| io("write", path)(e.into_error()))?
        .sync_all()
        .map_err(io("sync", path))
}

fn artifact(
    kind: ArtifactKind,
    name: &str,
    path: &Path,
    verity: Option<Verity>,
) -> Result<Artifact, ReleaseError> {
    let file = File::open(path).map_err(io("open", path))?;
    let (sha256, size) = sha256_reader(file).map_err(io("read", path))?;
    Ok(Artifact {
        kind,
        name: name.to_owned(),
        size,
        sha256,
        compression: None,
        verity,
    })
}

/// Write a synthetic release folder at `dir` (created; existing files replaced), signed by
/// `keys` (manifest and usr-hash statement).
pub fn synthetic_release(
    dir: &Path,
    spec: &SyntheticSpec,
    keys: &[&SigningKey],
) -> Result<SyntheticRelease, ReleaseError> {
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    let usr = dir.join(USR_IMG);
    let data_len = spec.usr_len.max(4096).div_ceil(4096) * 4096;
    write_payload(&usr, data_len, spec.seed)?;
    seal_release(dir, spec, data_len, keys)
}

/// [`synthetic_release`] with the `/usr` filesystem part given (`data`, padded with zeros to
/// 4 KiB): a patch release that shares most blocks with an earlier one (adaptive installs).
pub fn synthetic_release_with_data(
    dir: &Path,
    spec: &SyntheticSpec,
    data: &[u8],
    keys: &[&SigningKey],
) -> Result<SyntheticRelease, ReleaseError> {
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    let usr = dir.join(USR_IMG);
    let data_len = (data.len() as u64).max(4096).div_ceil(4096) * 4096;
    let mut padded = data.to_vec();
    padded.resize(data_len as usize, 0);
    fs::write(&usr, &padded).map_err(io("write", &usr))?;
    seal_release(dir, spec, data_len, keys)
}

/// Seal `dir/usr.img` (its first `data_len` bytes), write the placeholder kernel and
/// initramfs, the manifest and its signature.
fn seal_release(
    dir: &Path,
    spec: &SyntheticSpec,
    data_len: u64,
    keys: &[&SigningKey],
) -> Result<SyntheticRelease, ReleaseError> {
    let usr = dir.join(USR_IMG);
    let salt = {
        let mut s = [0u8; 32];
        let mut gen = Bytes(spec.seed ^ 0x5a5a_5a5a | 1);
        for c in s.chunks_mut(8) {
            c.copy_from_slice(&gen.next().to_le_bytes());
        }
        s.to_vec()
    };
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&salt[..16]);
    let (_, verity) = seal_usr_image(&usr, data_len, salt, uuid, &spec.os, &spec.version, keys)
        .map_err(|e| ReleaseError::Unpublishable {
            version: spec.version.clone(),
            reason: format!("sealing {}: {e}", usr.display()),
        })?;
    let kernel = dir.join(VMLINUZ);
    write_payload(&kernel, spec.kernel_len.max(1), spec.seed ^ 0x6b65_726e)?;
    let initrd = dir.join(INITRD_IMG);
    write_payload(&initrd, spec.initrd_len.max(1), spec.seed ^ 0x696e_6974)?;
    let manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        os: spec.os.clone(),
        version: spec.version.clone(),
        channel: spec.channel.clone(),
        arch: spec.arch.clone(),
        sequence: spec.sequence,
        issued_at: spec.issued_at,
        expires_at: spec.issued_at + spec.valid_for,
        artifacts: vec![
            artifact(ArtifactKind::Usr, USR_IMG, &usr, Some(verity.clone()))?,
            artifact(ArtifactKind::Kernel, VMLINUZ, &kernel, None)?,
            artifact(ArtifactKind::Initrd, INITRD_IMG, &initrd, None)?,
        ],
        sysext_level: spec.sysext_level.clone(),
    };
    let mut manifest = manifest;
    for image in &spec.extensions {
        let unpublishable = |reason: String| ReleaseError::Unpublishable {
            version: spec.version.clone(),
            reason,
        };
        let name = image
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                unpublishable(format!("extension {} has no file name", image.display()))
            })?
            .to_owned();
        let statement = basalt_sysext::image::read_statement_unverified(image)
            .map_err(|e| unpublishable(e.to_string()))?;
        let dest = dir.join(&name);
        fs::copy(image, &dest).map_err(io("copy", &dest))?;
        manifest.artifacts.push(artifact(
            ArtifactKind::Sysext,
            &name,
            &dest,
            Some(statement.verity),
        )?);
    }
    let json = manifest.to_json().map_err(|source| ReleaseError::Sign {
        source: Box::new(source),
    })?;
    let json_path = dir.join(RELEASE_JSON);
    basalt_fsutil::write_atomic(&json_path, &json, 0o644)
        .map_err(super::error::replace(&json_path))?;
    let signed = sign_release(&manifest, keys).map_err(|source| ReleaseError::Sign {
        source: Box::new(source),
    })?;
    let signed_path = dir.join(RELEASE_SIGNED);
    basalt_fsutil::write_atomic(&signed_path, &signed, 0o644)
        .map_err(super::error::replace(&signed_path))?;
    Ok(SyntheticRelease {
        dir: dir.to_path_buf(),
        manifest,
        signed,
        root_hash: verity.root_hash,
        hash_offset: data_len,
    })
}

/// Add a unified kernel image to the synthetic release `rel` (its manifest re-signed by
/// `keys`): systemd-stub (`stub`, the real one from `systemd-boot-efi`) with the release's
/// placeholder kernel and initramfs, os-release, and the command line `cmdline` — by default
/// `console=ttyS0 usrhash=<the release's root hash>`; tests pass another to make a UKI that
/// lies. Unsigned for Secure Boot (nothing boots it on the host). Written as
/// `<os>-<version>.efi`, artifact kind `uki`.
pub fn add_uki(
    rel: &mut SyntheticRelease,
    stub: &Path,
    cmdline: Option<&str>,
    keys: &[&SigningKey],
) -> Result<PathBuf, ReleaseError> {
    use crate::build::uki;
    let m = &rel.manifest;
    let version = m.version.clone();
    let unpublishable = |reason: String| ReleaseError::Unpublishable {
        version: version.clone(),
        reason,
    };
    let line = cmdline
        .map(str::to_owned)
        .unwrap_or_else(|| format!("console=ttyS0 usrhash={}", rel.root_hash.to_hex()));
    let name = uki::release_uki_name(&m.os, &m.version.to_string());
    let path = rel.dir.join(&name);
    uki::build(
        stub,
        &uki::UkiInputs {
            kernel: &rel.dir.join(VMLINUZ),
            initrd: &rel.dir.join(INITRD_IMG),
            cmdline: &line,
            os_release: &uki::os_release(&m.os, &m.version.to_string()),
        },
        &path,
    )
    .map_err(|e| unpublishable(e.to_string()))?;
    rel.manifest
        .artifacts
        .retain(|a| a.kind != ArtifactKind::Uki);
    rel.manifest
        .artifacts
        .push(artifact(ArtifactKind::Uki, &name, &path, None)?);
    let json = rel
        .manifest
        .to_json()
        .map_err(|source| ReleaseError::Sign {
            source: Box::new(source),
        })?;
    let json_path = rel.dir.join(RELEASE_JSON);
    basalt_fsutil::write_atomic(&json_path, &json, 0o644)
        .map_err(super::error::replace(&json_path))?;
    rel.signed = sign_release(&rel.manifest, keys).map_err(|source| ReleaseError::Sign {
        source: Box::new(source),
    })?;
    let signed_path = rel.dir.join(RELEASE_SIGNED);
    basalt_fsutil::write_atomic(&signed_path, &rel.signed, 0o644)
        .map_err(super::error::replace(&signed_path))?;
    Ok(path)
}
